"""Transfer evaluation: fine-tune each pretrained backbone on each target task and split; the table.

A transfer run is a pretrain run on the target's shards with both debiasing losses off and the
backbone initialised from a pretraining checkpoint (`model.init_from`; the heads start fresh).
Top-1 is video-level: the trainer's `video_acc` on the test split (mean softmax over
`finetune.clip.eval_clips` evenly spaced clips of each video).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from statistics import mean

from debias import runs, storage
from debias.bias import BiasConfig
from debias.config import PathStr, check
from debias.train import PretrainConfig

SCRATCH = "scratch"  # the pretraining name that means "no pretraining" (random initialisation)


@dataclass
class FoldConfig:
    """One official split of a target: UCF101 and HMDB51 publish 3, Diving48 V2 one. Each split is
    curated on its own (preprocess input.split_index), so each has its own shards."""

    shards: PathStr = ""  # that split's preprocess output (holds shards/ and classes.json)
    train: str = "train"  # shard split to fine-tune on
    test: str = "test"  # shard split to report top-1 on

    def __post_init__(self) -> None:
        check(bool(self.shards), "shards", "needs the preprocess output folder of this split")


@dataclass
class TargetConfig:
    folds: list[FoldConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        check(len(self.folds) >= 1, "folds", "needs at least one {shards, train, test} split")


@dataclass
class TransferConfig:
    out: PathStr = "out/transfer"  # runs in OUT/runs, summary.json, report.md and plots in OUT
    # name -> pretraining checkpoint folder, or a pretrain run folder (its latest checkpoint), local or a
    # URI; the name `scratch` with "" is the from-scratch reference
    pretrained: dict[str, PathStr] = field(default_factory=dict)
    source_shards: PathStr = "out/shards"  # the pretraining data: the scene-bias measurements run on it
    targets: dict[str, TargetConfig] = field(default_factory=dict)
    # The fine-tuning recipe (paper: all layers, lr 0.005). model must match the pretrained backbones;
    # shards, name, out, splits, the loss weights and model.init_from are set per run.
    finetune: PretrainConfig = field(default_factory=PretrainConfig)
    bias: BiasConfig = field(default_factory=BiasConfig)
    max_parallel: int = 0  # fine-tuning runs at once; 0: as many as the cluster holds
    run_cpus: float = 0.25  # each run's driver task (it waits on its Train run)
    bias_cpus: float = 1.0  # a bias measurement: in-process torch on one core
    job_set_paths = ("finetune.shards", "finetune.out", "finetune.model.init_from")  # not a field: set per run

    def __post_init__(self) -> None:
        check(self.max_parallel >= 0, "max_parallel", "must be >= 0 (0 = auto)")
        for name, path in self.pretrained.items():
            check(bool(path) or name == SCRATCH, f"pretrained.{name}",
                  f"needs a checkpoint directory (only '{SCRATCH}' may be empty)")


@dataclass
class RunSpec:
    pretrain: str
    target: str
    split: int  # 1-based fold number, as UCF101/HMDB51 name their splits
    config: PretrainConfig


def run_specs(cfg: TransferConfig) -> list[RunSpec]:
    """Every (pretrained, target, split) fine-tuning run, with its PretrainConfig."""
    specs = []
    for pre, checkpoint in cfg.pretrained.items():
        for target, t in cfg.targets.items():
            for k, fold in enumerate(t.folds, start=1):
                run = dataclasses.replace(
                    cfg.finetune, shards=storage.absolute(fold.shards), out=storage.join(storage.absolute(cfg.out), "runs"),
                    name=f"{pre}__{target}__split{k}", train_split=fold.train, eval_splits=[fold.test],
                    loss=dataclasses.replace(cfg.finetune.loss, lambda_scene=0.0, lambda_mask=0.0),
                    model=dataclasses.replace(cfg.finetune.model,
                                              init_from=runs.checkpoint_path(checkpoint) if checkpoint else ""))
                specs.append(RunSpec(pre, target, k, run))
    return specs


def transfer_table(rows: list[dict], targets: list[str]) -> list[dict]:
    """The paper's table: one row per pretraining, per target the mean top-1 over its splits."""
    table = []
    for pre in dict.fromkeys(r["pretrain"] for r in rows):
        entry: dict = {"pretrain": pre}
        for target in targets:
            scores = [r["top1"] for r in rows if r["pretrain"] == pre and r["target"] == target]
            entry[target] = mean(scores) if scores else None
        table.append(entry)
    return table
