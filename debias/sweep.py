"""Loss-weight sweeps: the config, the Tune search space, trial sizing and picking the best trial.

Everything here is plain Python (no cluster): `ray_jobs/sweep.py` turns it into a `tune.Tuner` whose
trials each run one `run_pretrain` with the trial's `lambda_scene` and `lambda_mask`.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Literal

from ray import tune

from debias import runs
from debias.config import check, from_dict
from debias.selection import check_debiasing_selection, check_not_reporting, metric_split, selection_record
from debias.tracking import TrackingConfig
from debias.train import PretrainConfig

SWEPT = ("lambda_scene", "lambda_mask")  # the PretrainConfig.loss keys a sweep searches over


@dataclass
class SpaceConfig:
    """The values one loss weight takes. `grid`: every value in `values` (crossed with the other weight's
    grid); `choice`: one of `values` at random per trial; `uniform` / `loguniform`: drawn from
    [low, high] per trial (loguniform needs low > 0: use `choice` or `grid` to include 0)."""

    kind: Literal["grid", "choice", "uniform", "loguniform"] = "grid"
    values: list[float] = field(default_factory=lambda: [0.2])
    low: float = 0.01
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.kind in ("grid", "choice"):
            check(len(self.values) >= 1, "values", f"{self.kind} needs at least one value")
            check(all(v >= 0 for v in self.values), "values", "loss weights must be >= 0")
        else:
            check(0 <= self.low < self.high, "low", f"need 0 <= low < high, got low={self.low}, high={self.high}")
            check(self.kind != "loguniform" or self.low > 0, "low", "loguniform needs low > 0")


@dataclass
class AshaConfig:
    enabled: bool = True  # false: every trial runs all its epochs
    grace_period: int = 2  # epochs a trial always gets before it can be stopped
    reduction_factor: float = 2.0  # keep the best 1/reduction_factor at each rung

    def __post_init__(self) -> None:
        check(self.grace_period >= 1, "grace_period", "must be >= 1")
        check(self.reduction_factor > 1, "reduction_factor", "must be > 1")


@dataclass
class SweepConfig:
    """A Tune sweep over the SDN loss weights; every trial is `pretrain` with the trial's weights."""

    name: str = "sweep"  # the sweep lives in STORAGE/NAME; running it again resumes it (Tuner.restore)
    storage: str = "out/sweeps"  # on a cluster: a path every node sees (NFS) or s3://...
    # the official code's reversal scales: 1.0 (scene-only stage) and 0.5 (full model)
    lambda_scene: SpaceConfig = field(default_factory=lambda: SpaceConfig(values=[0.2, 0.5, 1.0]))
    lambda_mask: SpaceConfig = field(default_factory=lambda: SpaceConfig(values=[0.5, 1.0]))
    num_samples: int = 1  # grid: repeats of the whole grid; random kinds: trials drawn
    # Each weight pair trains once per seed, and the best pair is chosen on its mean over them: with one
    # seed a difference between two pairs may be noise (the spread is in the summary's by_weights).
    seeds: list[int] = field(default_factory=lambda: [0])
    metric: str = "ood_val_acc"  # a per-epoch metric of the trainer on a selection split (debias/selection.py)
    mode: Literal["max", "min"] = "max"
    # true: accept a metric that cannot reward debiasing (an in-distribution split's or the training
    # objective's), for tests of the sweep's machinery; the reporting split stays refused either way
    allow_in_distribution_metric: bool = False
    asha: AshaConfig = field(default_factory=AshaConfig)
    max_concurrent_trials: int = 0  # 0: as many as the cluster holds (GPUs, or CPUs on a CPU cluster)
    trial_cpus: float = 0.25  # the trial's own driver: it only waits on its Train run, so a fraction
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # name/out are set per trial

    def __post_init__(self) -> None:
        check(self.num_samples >= 1, "num_samples", "must be >= 1")
        check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds",
              f"must list at least one seed, each once, got {self.seeds}")
        check(self.max_concurrent_trials >= 0, "max_concurrent_trials", "must be >= 0 (0 = auto)")
        check(self.trial_cpus > 0, "trial_cpus", "must be > 0")
        check(self.pretrain.scaling.num_workers > 0, "pretrain.scaling.num_workers",
              "a trial reports its epochs to Tune through Ray Train's callbacks, which local mode (0) does not run")
        # Tune's best trial and ASHA's pruning both read `metric`: it must be able to reward debiasing
        # and must not be read where the claims are (debias/selection.py).
        split = selection(self)["selected_on"]
        check(split == "train" or self.pretrain.eval_every_epochs == 1, "pretrain.eval_every_epochs",
              f"must be 1 for metric={self.metric!r}: Tune and ASHA read the metric in every epoch's report")


def selection(cfg: SweepConfig) -> dict:
    """What the sweep's summary states: the metric and split that chose the weights, the claims' splits."""
    p = cfg.pretrain
    if cfg.allow_in_distribution_metric:
        check_not_reporting(cfg.metric, p.report_splits, "metric")
        split = metric_split(cfg.metric, p.eval_splits, "metric")
    else:
        split = check_debiasing_selection(cfg.metric, p.eval_splits, p.report_splits, p.selection_splits, "metric")
    return selection_record(cfg.metric, split, p.report_splits)


def domain(space: SpaceConfig) -> Any:
    """The Tune search domain for one loss weight."""
    if space.kind == "grid":
        return tune.grid_search(list(space.values))
    if space.kind == "choice":
        return tune.choice(list(space.values))
    if space.kind == "uniform":
        return tune.uniform(space.low, space.high)
    return tune.loguniform(space.low, space.high)


def param_space(cfg: SweepConfig) -> dict:
    """Tune's param_space: one search domain per swept weight, crossed with the seeds (the rest of the
    config is constant and travels beside it, see `trial_pretrain_config`)."""
    return {**{key: domain(getattr(cfg, key)) for key in SWEPT}, "seed": tune.grid_search(list(cfg.seeds))}


def num_trials(cfg: SweepConfig) -> int:
    """How many trials the sweep runs: grid sizes multiply, times the seeds, times num_samples."""
    grid = math.prod(len(getattr(cfg, k).values) for k in SWEPT if getattr(cfg, k).kind == "grid")
    return grid * len(cfg.seeds) * cfg.num_samples


def trial_pretrain_config(trial_config: dict, base: dict, trial_name: str, runs_dir: str) -> PretrainConfig:
    """What one trial trains: `base` (a PretrainConfig as data) with the trial's weights and seed, and its
    own run name."""
    cfg = from_dict(PretrainConfig, base)
    loss = dataclasses.replace(cfg.loss, **{k: float(trial_config[k]) for k in SWEPT})
    cfg = dataclasses.replace(cfg, seed=int(trial_config.get("seed", cfg.seed)))
    # the sweep tracks its trials through Tune's own callbacks (tracking.tune_callbacks); a tracker inside
    # each trial's training as well would log every epoch twice
    return dataclasses.replace(cfg, loss=loss, name=trial_name, out=runs_dir, tracking=TrackingConfig())


def trial_resources(cfg: SweepConfig) -> dict[str, float]:
    """What one trial reserves for its own driver (its Train workers reserve theirs separately)."""
    return {"CPU": cfg.trial_cpus}


def run_task_cpus(pretrain: PretrainConfig, waiting_cpus: float) -> float:
    """The CPUs of the task that fits a run: `waiting_cpus` while it only waits on its worker group, and
    one worker's more in local mode (num_workers 0), where it trains."""
    return waiting_cpus + (pretrain.scaling.cpus_per_worker if pretrain.scaling.num_workers == 0 else 0.0)


def concurrent_runs(pretrain: PretrainConfig, driver_cpus: float, cluster: dict[str, float]) -> int:
    """Training runs of `pretrain` that fit at once in `cluster` (ray.cluster_resources()).

    On GPUs: one run per `num_workers` GPUs. On CPUs: each run holds its driver, its workers and at
    least one clip-decoding task of its Ray Data pipeline; counting that task is what keeps a small
    machine from filling every CPU with drivers and workers whose data can then never be read. A run in
    local mode (num_workers 0) trains in its driver task, which then holds one worker's CPUs besides
    (`run_task_cpus`): it counts as one worker.
    """
    sc = pretrain.scaling
    workers = max(1, sc.num_workers)
    if sc.use_gpu:
        return max(1, int(cluster.get("GPU", 0) // workers))
    per_run = driver_cpus + workers * sc.cpus_per_worker + pretrain.loader.clip_cpus
    return max(1, int(cluster.get("CPU", 0) // per_run))


def concurrent_trials(cfg: SweepConfig, cluster: dict[str, float]) -> int:
    """`max_concurrent_trials`, or when 0 as many trials as the cluster holds."""
    return cfg.max_concurrent_trials or concurrent_runs(cfg.pretrain, cfg.trial_cpus, cluster)


def trial_rows(results: list[dict], metric: str, runs_dir: str) -> list[dict]:
    """One summary row per trial from Tune results: [{"trial", "lambda_scene", "lambda_mask", "seed", METRIC,
    "epochs", "stopped_early", "status", "run", "checkpoint"}]; `results` items hold trial_id, config,
    metrics, status, epochs_planned. `run` is the trial's Train run (RUNS_DIR/TRIAL_ID), `checkpoint` its
    latest checkpoint ("" when it saved none)."""
    rows = []
    for r in results:
        m = r["metrics"] or {}
        epochs = int(m.get("epoch", -1)) + 1
        run = runs.run_path(runs_dir, r["trial_id"])
        saved = runs.checkpoints(run)
        rows.append({"trial": r["trial_id"], **{k: float(r["config"][k]) for k in SWEPT},
                     "seed": int(r["config"].get("seed", 0)),
                     metric: m.get(metric), "epochs": epochs, "stopped_early": 0 < epochs < r["epochs_planned"],
                     "status": r["status"], "run": run, "checkpoint": saved[-1] if saved else ""})
    return rows


def weight_rows(rows: list[dict], metric: str) -> list[dict]:
    """One row per weight pair over its seeds' trials: {"lambda_scene", "lambda_mask", "seeds" (that
    reported METRIC), METRIC_mean, METRIC_std (0 with one seed), "trials"}, in the trials' order."""
    pairs: dict[tuple, list[dict]] = {}
    for r in rows:
        pairs.setdefault(tuple(r[k] for k in SWEPT), []).append(r)
    out = []
    for pair, trials in pairs.items():
        values = [r[metric] for r in trials if r.get(metric) is not None]
        out.append({**dict(zip(SWEPT, pair)), "seeds": len(values),
                    f"{metric}_mean": statistics.fmean(values) if values else None,
                    f"{metric}_std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else None,
                    "trials": [r["trial"] for r in trials]})
    return out


def best_trial(rows: list[dict], metric: str, mode: Literal["max", "min"]) -> dict:
    """The best weight pair by the mean of `metric` over its seeds (ties: the first), and of its trials the
    one of the lowest seed that reported it (not its best seed, which would pick the luckiest run):
    that trial's row with the pair's METRIC_mean, METRIC_std and seeds."""
    pairs = [p for p in weight_rows(rows, metric) if p["seeds"]]
    if not pairs:
        raise RuntimeError(f"no trial reported '{metric}' (statuses: {[r['status'] for r in rows]})")
    sign = 1.0 if mode == "max" else -1.0
    pair = max(pairs, key=lambda p: sign * p[f"{metric}_mean"])
    trial = min((r for r in rows if r["trial"] in pair["trials"] and r.get(metric) is not None),
                key=lambda r: r.get("seed", 0))
    return {**trial, **{k: pair[k] for k in (f"{metric}_mean", f"{metric}_std", "seeds")}}
