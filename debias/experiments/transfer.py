"""Transfer evaluation: fine-tune each pretrained backbone on each target task and split; the table.

A transfer run is a pretrain run on the target's shards with both debiasing losses off and the
backbone initialised from a pretraining checkpoint (`model.init_from`; the heads start fresh).
Top-1 is video-level: the trainer's `video_acc` on the test split (mean softmax over
`finetune.clip.eval_clips` evenly spaced clips of each video) after the recipe's last epoch; the test
split is each run's reporting split, so no checkpoint or schedule is chosen on it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from statistics import mean

import ray
from tqdm import tqdm

from debias import storage

from debias.training import runs
from debias.evaluation.bias import MEASURES, BiasConfig, dataset_bias, load_bias_data, measure_bias
from debias.evaluation.field_bias import FIELD_MEASURES, FieldMeasuresConfig, field_bias_measures
from debias.cluster import bounded, init_ray
from debias.config import PathStr, check, from_dict, to_dict
from debias.training.pretrain import run_pretrain
from debias.report import plot_bars, plot_curves, table
from debias.curation.shards import read_classes
from debias.experiments.sweep import concurrent_runs, run_task_cpus
from debias.training.train import PretrainConfig

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
    field_bias: FieldMeasuresConfig = field(default_factory=FieldMeasuresConfig)  # the field's measures (SCUBA, HAT)
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
                    # top-1 is read on the test fold at the recipe's last epoch: nothing may choose on it,
                    # so the kept checkpoints are ranked by the training loss
                    report_splits=[fold.test], selection_splits=[], best_metric="train_loss",
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


log = logging.getLogger(__name__)

BIAS_COLUMNS = ["pretrain", *MEASURES, *FIELD_MEASURES]  # the scene-bias table: one row per pretrained model


@dataclass
class TransferResult:
    """A finished transfer, as OUT/summary.json holds it (`write_record` / `read_record`)."""

    transfer: list[dict]  # one row per (pretrain, target, split): top1, epochs, splits
    table: list[dict]  # one row per pretrained model: its top-1 per target, mean over the splits
    bias: dict[str, dict]  # pretrained model -> its scene-bias measures (debias.evaluation.bias)
    dataset_bias: dict  # the pretraining data's own scene bias
    wall_s: float
    config: dict


def write_transfer(out: str, result: TransferResult) -> str:
    path = storage.join(out, "summary.json")
    storage.write_record(path, result)
    return path


def read_transfer(path: str) -> TransferResult:
    """The transfer at OUT (its folder, or its summary.json)."""
    return storage.read_record(TransferResult, path if path.endswith(".json") else storage.join(path, "summary.json"))


@ray.remote
def finetune(config: dict) -> dict:
    """One fine-tuning run (a TorchTrainer launched from this task); its per-epoch history."""
    result = run_pretrain(from_dict(PretrainConfig, config))
    return {"history": result["history"], "final": result["final"]}


@ray.remote
def dataset_bias_of(shards: str, bias: dict) -> dict:
    """What the pretraining data itself says about scene bias (once per dataset, not per model)."""
    return dataset_bias(load_bias_data(shards, from_dict(BiasConfig, bias)), len(read_classes(shards)))


@ray.remote
def bias_of(checkpoint: str, shards: str, bias: dict, field_bias: dict) -> dict:
    """The scene-bias measurements of one pretrained model on its pretraining data: the project's own
    and the field's (SCUBA, SCUFO, HAT)."""
    model, info = runs.load_model(checkpoint)
    clip = info.config.clip
    return (measure_bias(model, shards, info.num_actions, info.num_scenes, from_dict(BiasConfig, bias))
            | field_bias_measures(model, shards, clip.clip_len, clip.crop_px, from_dict(FieldMeasuresConfig, field_bias)))


def run_transfer(cfg: TransferConfig) -> TransferResult:
    """All fine-tuning runs and bias measurements; returns the summary also written to OUT/summary.json."""
    t0 = time.perf_counter()
    out = storage.absolute(cfg.out)
    storage.check_storage(out, "out")
    specs = run_specs(cfg)
    if not specs:
        raise SystemExit("transfer: nothing to run (set pretrained: {name: checkpoint} and targets: {...})")
    init_ray()
    parallel = cfg.max_parallel or concurrent_runs(cfg.finetune, cfg.run_cpus, ray.cluster_resources())
    log.info("transfer: %d fine-tuning runs (%d at a time), bias measurements of %s -> %s", len(specs), parallel,
             sorted(k for k in cfg.pretrained if k != SCRATCH), out)

    # Bias measurements, 1 task per pretrained model: in-process torch on `bias_cpus` cores, started
    # first so they overlap the fine-tuning (they need no Train workers).
    bias_refs = {name: bias_of.options(num_cpus=cfg.bias_cpus).remote(
        storage.absolute(ckpt), storage.absolute(cfg.source_shards), to_dict(cfg.bias), to_dict(cfg.field_bias))
        for name, ckpt in cfg.pretrained.items() if name != SCRATCH}
    data_bias_ref = dataset_bias_of.options(num_cpus=cfg.bias_cpus).remote(storage.absolute(cfg.source_shards),
                                                                           to_dict(cfg.bias))
    # Fine-tuning, 1 task per (pretrained, target, split): each task only drives its own TorchTrainer
    # (a fraction of a CPU); at most `parallel` in flight so that the Train workers and the Data tasks
    # feeding them always find CPUs (or GPUs).
    launch = {i: (lambda spec=spec: finetune.options(num_cpus=run_task_cpus(cfg.finetune, cfg.run_cpus))
                  .remote(to_dict(spec.config))) for i, spec in enumerate(specs)}
    rows, histories = [], {}
    with tqdm(total=len(specs), desc="transfer runs", unit="run", disable=None) as bar:
        for i, result in bounded(launch, parallel):
            spec = specs[i]
            test_split = spec.config.eval_splits[0]
            rows.append({"pretrain": spec.pretrain, "target": spec.target, "split": spec.split,
                         "train_split": spec.config.train_split, "test_split": test_split,
                         # video level: the mean softmax over finetune.clip.eval_clips clips of each video
                         "top1": result["final"].get(f"{test_split}_video_acc",
                                                     result["final"].get(f"{test_split}_acc")),
                         "epochs": len(result["history"])})
            histories[spec.config.name] = result["history"]
            bar.update(1)
            log.info("transfer: %s done (%d/%d), top-1 %s", spec.config.name, len(rows), len(specs), rows[-1]["top1"])
    order = {(s.pretrain, s.target, s.split): i for i, s in enumerate(specs)}
    rows.sort(key=lambda r: order[(r["pretrain"], r["target"], r["split"])])
    bias = {name: ray.get(ref) for name, ref in tqdm(bias_refs.items(), desc="bias measurements", unit="model",
                                                     disable=None)}
    return write_report(cfg, out, rows, histories, bias, ray.get(data_bias_ref), time.perf_counter() - t0)


def write_report(cfg: TransferConfig, out: str, rows: list[dict], histories: dict, bias: dict, data_bias: dict,
                 wall_s: float) -> TransferResult:
    targets = list(cfg.targets)
    summary_table = transfer_table(rows, targets)
    bias_rows = [{"pretrain": name, **{k: v for k, v in b.items() if k != "videos"}} for name, b in bias.items()]
    summary = TransferResult(transfer=rows, table=summary_table, bias=bias, dataset_bias=data_bias,
                             wall_s=round(wall_s, 1), config=to_dict(cfg))
    write_transfer(out, summary)
    plot_bars(summary_table, "pretrain", targets, storage.join(out, "transfer.png"), ylabel="top-1 (mean over splits)")
    test_metrics = sorted({f"{r['test_split']}_acc" for r in rows})
    plot_curves(histories, ["train_acc", *test_metrics], storage.join(out, "curves.png"))
    report = "\n".join([
        "# Transfer and scene bias", "",
        (f"Top-1 (video level: mean softmax over {cfg.finetune.clip.eval_clips} clip(s) per video) after fine-tuning "
         "all layers with a new head; mean over each target's splits:"), "",
        table(summary_table, ["pretrain", *targets]), "",
        "![transfer](transfer.png)", "",
        "Per split:", "", table(rows, ["pretrain", "target", "split", "top1", "epochs"]), "",
        ("Scene bias of each pretrained model on its pretraining data: `scene_probe_acc`, a linear probe on "
         f"frozen features predicting the pseudo scene label on `{cfg.bias.scene_split}`, and `scene_mdl_bits`, "
         "the online codelength of those labels given the features (fewer bits = more scene information; "
         "`compression` = uniform code / online code); `masked_action_acc` / `masked_action_prob`: the model's own "
         f"action accuracy and true-class probability on `{cfg.bias.test_split}` clips with the people removed "
         "(chance = none from the background); `representation_bias` = log(scene-only probe accuracy / chance); "
         f"`counterfactual_*`: the model on `{cfg.bias.test_split}` clips whose people were pasted onto another "
         "action's background (`follows_background`: share predicted as the background's action). The field's "
         f"protocols on `{cfg.field_bias.split}` (docs/bias-eval.md): `scuba_top1` and `contrasted_acc` (Li et al., "
         "ICCV 2023), `background_only_top1`, `human_only_top1`, `action_swap_background_acc` (Chung et al., "
         "NeurIPS 2022); their bootstrap intervals and dropped clips are in summary.json."), "",
        (f"The data itself (once, not per model): the true scene label alone gives the action at "
         f"{data_bias['scene_label_action_acc']:.3f} (chance {data_bias['action_chance']:.3f}), "
         f"log ratio {data_bias['scene_label_bias']:.3f}: the ceiling of any model's `representation_bias`."), "",
        table(bias_rows, BIAS_COLUMNS) if bias_rows else "(no pretrained checkpoints to measure)", "",
        "![fine-tuning curves](curves.png)", "",
    ])
    storage.write_text(storage.join(out, "report.md"), report)
    log.info("transfer top-1:\n%s", table(summary_table, ["pretrain", *targets]))
    if bias_rows:
        log.info("scene bias:\n%s", table(bias_rows, BIAS_COLUMNS))
    log.info("transfer: %d runs in %.0f s; summary: %s  report: %s", len(rows), wall_s,
             storage.join(out, "summary.json"), storage.join(out, "report.md"))
    return summary
