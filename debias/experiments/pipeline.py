"""The `pipeline` job: every stage of the study in order, each in DIR/STAGE with a hash of its config
and inputs, so a rerun skips what is done and resumes what was interrupted (`Stages`); `run_pipeline`
and the summary it owns (`PipelineResult`, `read_pipeline`). The driver is ray_jobs/pipeline.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from statistics import fmean as mean
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass, field

from debias import storage

from debias.training import runs
from debias.config import PathStr, check, to_dict
from debias.curation.curate import PreprocessConfig
from debias.curation.preprocess import run_preprocess
from debias.training.pretrain import run_pretrain
from debias.report import plot_bars, plot_curves, table
from debias.experiments.ablation import ablation_table, paired_ablation
from debias.experiments.sweep import SWEPT, SweepConfig, SweepResult, run_sweep
from debias.curation.synth import SynthConfig, run_synth
from debias.experiments.transfer import (BIAS_COLUMNS, SCRATCH, FoldConfig, TargetConfig, TransferConfig,
                                         TransferResult, run_transfer, transfer_table)

log = logging.getLogger(__name__)

BEST = "sweep_best"  # the transfer name of the sweep's best trial


@dataclass
class WeightsConfig:
    lambda_scene: float = 0.0
    lambda_mask: float = 0.0


@dataclass
class TargetDataConfig:
    """A transfer target to curate: once per official split (UCF101 / HMDB51: 1, 2, 3; Diving48: 1)."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)  # input.split_index set per split
    splits: list[int] = field(default_factory=lambda: [1])

    def __post_init__(self) -> None:
        check(len(self.splits) >= 1 and all(1 <= k <= 3 for k in self.splits), "splits",
              f"must list official split numbers 1 to 3, got {self.splits}")


@dataclass
class PipelineConfig:
    """Paths inside the sections (synth.out, every preprocess out, sweep.storage/name, sweep.pretrain
    shards/out/name, transfer out/pretrained/source_shards/targets) are set by the pipeline from `out`;
    with `synth`, so are the source's and targets' manifests (a target's name is then its synth task)."""

    out: PathStr = "out/pipeline"
    # Generate the synthetic benchmark first (null: real datasets, manifests as given in source/targets).
    synth: SynthConfig | None = None
    source: PreprocessConfig = field(default_factory=PreprocessConfig)  # the pretraining data
    targets: dict[str, TargetDataConfig] = field(default_factory=dict)  # transfer targets, by name
    # Pretrainings with fixed weights, trained with sweep.pretrain beside the sweep (the paper's baseline).
    references: dict[str, WeightsConfig] = field(default_factory=lambda: {"baseline": WeightsConfig()})
    scratch: bool = True  # also fine-tune from random initialisation (the no-pretraining reference)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)  # the recipe; its targets come from `targets`

    def __post_init__(self) -> None:
        check(bool(self.targets), "targets", "needs at least one transfer target")
        check(not self.transfer.pretrained and not self.transfer.targets, "transfer",
              "pretrained and targets are set by the pipeline (from references, the sweep, scratch and "
              "`targets`): leave them empty")
        check(BEST not in self.references and SCRATCH not in self.references, "references",
              f"'{BEST}' and '{SCRATCH}' are names the pipeline gives")

    @property
    def job_set_paths(self) -> tuple[str, ...]:  # the paths set from `out` (debias.jobenv)
        synth = ("source.input.manifest", "targets.*.preprocess.input.manifest") if self.synth else ()
        return ("synth.out", "source.out", "targets.*.preprocess.out", "sweep.storage", "sweep.pretrain.shards",
                "transfer.out", "transfer.source_shards", *synth)


class Stages:
    """Runs stages in order, skipping those already done with the same hash (see module docstring)."""

    def __init__(self, out: str) -> None:
        self.out, self.timings_s, self.skipped, self.hashes = out, {}, [], {}

    def run(self, name: str, config: dict, inputs: list[str], work: Callable[[], Any], record: type | None = None) -> Any:
        """The stage's result: `work()`'s, or the saved one when the stage is up to date. `record`: the
        result's record type (saved and read back through its owner's layout), else a plain JSON value."""
        folder = storage.join(self.out, name)
        result_file = storage.join(folder, "result.json")
        digest = hashlib.sha256(json.dumps({"config": config, "inputs": [self.hashes[i] for i in inputs]},
                                           sort_keys=True).encode()).hexdigest()[:16]
        self.hashes[name] = digest
        state_file = storage.join(folder, "stage.json")
        state = storage.read_json(state_file) if storage.is_file(state_file) else None
        if state and state["hash"] == digest and state["done"]:
            log.info("pipeline: %s is up to date (%s), skipped", name, folder)
            self.skipped.append(name)
            return storage.read_record(record, result_file) if record else storage.read_json(result_file)
        if state and state["hash"] != digest:
            log.info("pipeline: %s changed (config or inputs), running it afresh", name)
            storage.delete(folder)
        elif state:
            log.info("pipeline: %s was interrupted, resuming", name)
        storage.write_json(state_file, {"hash": digest, "done": False})
        t0 = time.perf_counter()
        result = work()
        self.timings_s[name] = round(time.perf_counter() - t0, 1)
        if record:
            storage.write_record(result_file, result)
        else:
            storage.write_json(result_file, result)
        storage.write_json(state_file, {"hash": digest, "done": True, "config": config})
        return result


def curate(stages: Stages, cfg: PipelineConfig, name: str, task: str, pre: PreprocessConfig, inputs: list[str]) -> str:
    """Preprocess one dataset (or one split of it) in its own stage `data_NAME`; returns its shards folder.
    `task`: with synth, the benchmark task whose manifest it reads."""
    out = storage.absolute(cfg.out)
    if cfg.synth is not None:
        pre = dataclasses.replace(pre, input=dataclasses.replace(
            pre.input, manifest=storage.join(out, "synth", task, "manifest.csv")))
    pre = dataclasses.replace(pre, out=storage.join(out, f"data_{name}"))
    stages.run(f"data_{name}", to_dict(pre), inputs, lambda: run_preprocess(pre))
    return pre.out


def run_pipeline(cfg: PipelineConfig) -> PipelineResult:
    t0 = time.perf_counter()
    out = storage.absolute(cfg.out)
    storage.check_storage(out, "out")
    stages = Stages(out)

    # 1. the synthetic benchmark (optional): manifests for the source and every target task.
    upstream: list[str] = []
    if cfg.synth is not None:
        synth = dataclasses.replace(cfg.synth, out=storage.join(out, "synth"))
        stages.run("synth", to_dict(synth), [], lambda: run_synth(synth))
        upstream = ["synth"]
    # 2. curation (Ray Data), one stage per dataset.
    source_shards = curate(stages, cfg, "source", "source", cfg.source, upstream)
    targets = {}
    for name, t in cfg.targets.items():
        folds = []
        for k in t.splits:
            pre = dataclasses.replace(t.preprocess, input=dataclasses.replace(t.preprocess.input, split_index=k))
            folds.append(FoldConfig(shards=curate(stages, cfg, f"{name}_split{k}", name, pre, upstream)))
        targets[name] = TargetConfig(folds=folds)

    # 3. reference pretrainings (Ray Train), with the sweep's recipe and fixed weights, once per seed.
    seeds = cfg.sweep.seeds
    base = dataclasses.replace(cfg.sweep.pretrain, shards=source_shards)
    checkpoints: dict[int, dict[str, str]] = {s: {} for s in seeds}
    histories = {}
    for name, weights in cfg.references.items():
        for seed in seeds:
            run = dataclasses.replace(base, name=name, seed=seed, out=storage.join(out, f"pretrain_{name}_seed{seed}"),
                                      loss=dataclasses.replace(base.loss, **to_dict(weights)))
            result = stages.run(f"pretrain_{name}_seed{seed}", to_dict(run), ["data_source"],
                                lambda run=run: run_pretrain(run))
            checkpoints[seed][name] = result["checkpoint"]
            if seed == seeds[0]:
                histories[name] = result["history"]

    # 4. the loss-weight sweep (Ray Tune, ASHA): every weight pair once per seed.
    sweep_cfg = dataclasses.replace(cfg.sweep, storage=out, name="sweep", pretrain=base)
    sweep = stages.run("sweep", to_dict(sweep_cfg), ["data_source"], lambda: run_sweep(sweep_cfg), SweepResult)
    best = sweep.best
    for seed, trial in best_pair_trials(sweep).items():
        checkpoints[seed][BEST] = trial["checkpoint"]
    histories[f"{BEST} ({best['trial']})"] = runs.read_metrics(best["run"])

    # 5. transfer + scene bias of every pretrained backbone, once per seed: the seed-S backbones are
    #    fine-tuned with seed S, so that the backbones of one seed can be compared seed by seed.
    transfers = {}
    data_stages = [f"data_{n}_split{k}" for n, t in cfg.targets.items() for k in t.splits]
    for seed in seeds:
        pretrained = {**checkpoints[seed], **({SCRATCH: ""} if cfg.scratch else {})}
        transfer_cfg = dataclasses.replace(
            cfg.transfer, out=storage.join(out, f"transfer_seed{seed}"), pretrained=pretrained,
            source_shards=source_shards, targets=targets,
            finetune=dataclasses.replace(cfg.transfer.finetune, seed=seed,
                                         model=dataclasses.replace(base.model, init_from="")))
        transfers[seed] = stages.run(
            f"transfer_seed{seed}", to_dict(transfer_cfg),
            ["sweep", *[f"pretrain_{n}_seed{seed}" for n in cfg.references], *data_stages],
            lambda transfer_cfg=transfer_cfg: run_transfer(transfer_cfg), TransferResult)

    # 6. report.
    return write_report(cfg, out, stages, sweep, transfers, histories, time.perf_counter() - t0)


def best_pair_trials(sweep: SweepResult) -> dict[int, dict]:
    """Per seed, the trial of the sweep's best weight pair: the backbones transferred as `sweep_best`."""
    best = sweep.best
    trials = {t["seed"]: t for t in sweep.trials if all(t[k] == best[k] for k in SWEPT)}
    missing = [s for s in sweep.seeds if not trials.get(s, {}).get("checkpoint")]
    if missing:
        raise RuntimeError(f"the sweep's best pair (lambda_scene={best['lambda_scene']:g}, lambda_mask="
                           f"{best['lambda_mask']:g}) has no checkpoint at seed(s) {missing}: its trials "
                           f"{[(t['trial'], t['seed'], t['status']) for t in trials.values()]}")
    return {s: trials[s] for s in sweep.seeds}


def transfer_pairs(references: list[str], scratch: bool) -> tuple[tuple[str, str], ...]:
    """The transfer comparisons: the sweep's best against each reference, and every pretraining against
    no pretraining."""
    return (*((BEST, r) for r in references), *(((p, SCRATCH) for p in [BEST, *references]) if scratch else ()))


def transfer_comparisons(rows: list[dict], targets: list[str], pairs: tuple[tuple[str, str], ...]) -> list[dict]:
    """Per target and pair (a, b): the per-seed difference of top-1 (each seed's mean over the target's
    splits), its mean and 95 % paired intervals (debias.experiments.ablation.paired_ablation); with one
    seed, the difference alone."""
    out = []
    for target in targets:
        per_seed: dict[tuple[str, int], list[float]] = {}
        for r in rows:
            if r["target"] == target and r["top1"] is not None:
                per_seed.setdefault((r["pretrain"], r["seed"]), []).append(r["top1"])
        models = {f"{pre}_seed{seed}": {"variant": pre, "seed": seed, target: mean(v)}
                  for (pre, seed), v in per_seed.items()}
        out += paired_ablation(models, target, pairs=pairs)
    return out


@dataclass
class PipelineResult:
    """The pipeline's summary, as DIR/summary.json holds it (`write_record` / `read_record`)."""

    sweep: dict  # the sweep's result without its per-trial run paths' config (debias.experiments.sweep)
    # the sweep's seeds: each reference is pretrained once per seed, and the seed-S backbones (the
    # references', the best pair's seed-S trial, scratch) are fine-tuned with seed S
    seeds: list[int]
    transfer: list[dict]  # per (pretrain, target, split, seed) rows (debias.experiments.transfer)
    transfer_table: list[dict]  # per pretrain: top-1 per target, mean over splits and seeds
    comparisons: list[dict]  # per target, paired over seeds: the best against each reference, all against scratch
    bias: list[dict]  # per (pretrain, seed): the scene-bias measures of the pretrained model
    dataset_bias: dict
    timings_s: dict[str, float]
    skipped: list[str]  # stages that were up to date
    config: dict


def read_pipeline(path: str) -> PipelineResult:
    """The pipeline at DIR (its folder, or its summary.json)."""
    return storage.read_record(PipelineResult, path if path.endswith(".json") else storage.join(path, "summary.json"))


def write_report(cfg: PipelineConfig, out: str, stages: Stages, sweep: SweepResult,
                 transfers: dict[int, TransferResult], histories: dict, wall_s: float) -> PipelineResult:
    targets = list(cfg.targets)
    rows = [{**r, "seed": seed} for seed, t in transfers.items() for r in t.transfer]
    bias = [{"pretrain": name, "seed": seed, **b} for seed, t in transfers.items() for name, b in t.bias.items()]
    first = transfers[cfg.sweep.seeds[0]]
    summary = PipelineResult(
        sweep={"metric": sweep.metric, "mode": sweep.mode, "trials": sweep.trials, "best": sweep.best,
               "by_weights": sweep.by_weights, "seeds": sweep.seeds, "selection": sweep.selection},
        seeds=list(cfg.sweep.seeds), transfer=rows,
        transfer_table=[{**r, "seeds": len(transfers)} for r in transfer_table(rows, targets)],
        comparisons=transfer_comparisons(rows, targets, transfer_pairs(list(cfg.references), cfg.scratch)),
        bias=bias, dataset_bias=first.dataset_bias, timings_s={**stages.timings_s, "total": round(wall_s, 1)},
        skipped=stages.skipped, config=to_dict(cfg))
    storage.write_record(storage.join(out, "summary.json"), summary)
    plot_bars(summary.transfer_table, "pretrain", targets, storage.join(out, "transfer.png"), ylabel="top-1 (mean over splits)")
    metric = sweep.metric
    plot_curves(histories, sorted({"train_acc", metric, *[f"{s}_acc" for s in cfg.sweep.pretrain.eval_splits]}),
                storage.join(out, "pretrain_curves.png"))
    # the first seed's fine-tuning curves (every seed's: transfer_seedS/curves.png)
    storage.write_bytes(storage.join(out, "transfer_curves.png"),
                        storage.read_bytes(storage.join(out, f"transfer_seed{cfg.sweep.seeds[0]}", "curves.png")))
    bias_rows = [{k: v for k, v in b.items() if k != "videos"} for b in bias]
    best = sweep.best
    report = "\n".join([
        "# debias pipeline", "",
        f"## Sweep: {len(sweep.trials)} trials, best by `{metric}` ({sweep.mode})", "",
        table(sweep.trials, ["trial", *SWEPT, "seed", metric, "epochs", "stopped_early", "status"]), "",
        *([f"Over the seeds {sweep.seeds}:", "",
           table(sweep.by_weights, [*SWEPT, "seeds", f"{metric}_mean", f"{metric}_std"]), ""]
          if len(sweep.seeds) > 1 else []),
        (f"Best: lambda_scene={best['lambda_scene']:g}, lambda_mask={best['lambda_mask']:g}, {metric}="
         f"{best[f'{metric}_mean']:.3f} (mean over {best['seeds']} seeds, std {best[f'{metric}_std']:.3f}); its "
         f"trials of the seeds {sweep.seeds} are transferred as `{BEST}`."), "",
        "![pretraining curves](pretrain_curves.png)", "",
        f"## Transfer: top-1 after fine-tuning (mean over splits and the seeds {cfg.sweep.seeds})", "",
        table(summary.transfer_table, ["pretrain", *targets, "seeds"]), "",
        "![transfer](transfer.png)", "",
        ("Paired over the seeds (the backbones of seed S fine-tuned with seed S; per seed the mean over the "
         "target's splits), with 95 % intervals of the mean difference; the column `metric` names the target:"), "",
        ablation_table(summary.comparisons), "",
        table(rows, ["pretrain", "target", "split", "seed", "top1", "epochs"]), "",
        "![fine-tuning curves](transfer_curves.png)", "",
        "## Scene bias of each pretrained model (details: transfer_seedS/report.md)", "",
        table(bias_rows, [BIAS_COLUMNS[0], "seed", *BIAS_COLUMNS[1:]]), "",
        ("Timings (s): " + ", ".join(f"{k}={v}" for k, v in summary.timings_s.items())
         + (f"; skipped (up to date): {', '.join(stages.skipped)}" if stages.skipped else "")), "",
    ])
    storage.write_text(storage.join(out, "report.md"), report)
    log.info("transfer top-1:\n%s", table(summary.transfer_table, ["pretrain", *targets, "seeds"]))
    log.info("transfer, paired over seeds:\n%s", ablation_table(summary.comparisons))
    log.info("scene bias:\n%s", table(bias_rows, BIAS_COLUMNS))
    log.info("pipeline: %.0f s; summary: %s  report: %s", wall_s, storage.join(out, "summary.json"),
             storage.join(out, "report.md"))
    return summary
