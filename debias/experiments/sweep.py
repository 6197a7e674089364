"""Loss-weight sweeps with Ray Tune: the config, the search space, trial sizing, picking the best pair
over seeds, the Tuner (each trial one `run_pretrain` with its weights, a new Tuner or the interrupted
one restored) and the result it owns (`SweepResult`, `read_sweep`). The driver is ray_jobs/sweep.py."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import logging
import time
from collections.abc import Callable

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from debias import storage

from debias.training import runs
from debias.cluster import init_ray
from debias.config import PathStr, check, from_dict, to_dict
from debias.training.metrics import higher_is_better
from debias.training.selection import check_debiasing_selection, check_not_reporting, metric_split, selection_record
from debias.training.metrics import mode as metric_mode
from debias.experiments.stats import mean_std
from debias.training.pretrain import run_pretrain
from debias.report import plot_curves, plot_sweep, table
from debias.training.tracking import TrackingConfig, tune_callbacks
from debias.training.train import PretrainConfig

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
    storage: PathStr = "out/sweeps"  # on a cluster: a path every node sees (NFS) or s3://...
    # the official code's reversal scales: 1.0 (scene-only stage) and 0.5 (full model)
    lambda_scene: SpaceConfig = field(default_factory=lambda: SpaceConfig(values=[0.2, 0.5, 1.0]))
    lambda_mask: SpaceConfig = field(default_factory=lambda: SpaceConfig(values=[0.5, 1.0]))
    num_samples: int = 1  # grid: repeats of the whole grid; random kinds: trials drawn
    # Each weight pair trains once per seed, and the best pair is chosen on its mean over them: with one
    # seed a difference between two pairs may be noise (the spread is in the summary's by_weights).
    seeds: list[int] = field(default_factory=lambda: [0])
    # a per-epoch metric of the trainer on a selection split (debias/training/selection.py), in its
    # direction (debias/training/metrics.py)
    metric: str = "ood_val_acc"
    # true: accept a metric that cannot reward debiasing (an in-distribution split's or the training
    # objective's), for tests of the sweep's machinery; the reporting split stays refused either way
    allow_in_distribution_metric: bool = False
    asha: AshaConfig = field(default_factory=AshaConfig)
    max_concurrent_trials: int = 0  # 0: as many as the cluster holds (GPUs, or CPUs on a CPU cluster)
    trial_cpus: float = 0.25  # the trial's own driver: it only waits on its Train run, so a fraction
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # name/out are set per trial
    job_set_paths = ("pretrain.out",)  # not a field: what debias.jobenv leaves to the sweep

    def __post_init__(self) -> None:
        check(self.num_samples >= 1, "num_samples", "must be >= 1")
        check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds",
              f"must list at least one seed, each once, got {self.seeds}")
        check(self.max_concurrent_trials >= 0, "max_concurrent_trials", "must be >= 0 (0 = auto)")
        check(self.trial_cpus > 0, "trial_cpus", "must be > 0")
        check(self.pretrain.scaling.num_workers > 0, "pretrain.scaling.num_workers",
              "a trial reports its epochs to Tune through Ray Train's callbacks, which local mode (0) does not run")
        # Tune's best trial and ASHA's pruning both read `metric`: it must be able to reward debiasing
        # and must not be read where the claims are (debias/training/selection.py).
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


@dataclass
class SweepResult:
    """A finished sweep, as STORAGE/NAME/summary.json holds it (`write_record` / `read_record`)."""

    metric: str  # the trainer metric the best pair was chosen by
    mode: str  # its direction (debias.training.metrics)
    selection: dict  # the metric and split that chose, and the splits the claims are read from
    path: str  # STORAGE/NAME
    trials: list[dict]  # one row per trial (trial_rows)
    best: dict  # the best pair's trial row with METRIC_mean, METRIC_std, seeds (best_trial)
    by_weights: list[dict]  # one row per weight pair over its seeds (weight_rows)
    seeds: list[int]
    errors: list[str]
    wall_s: float
    config: dict


def write_sweep(result: SweepResult) -> str:
    path = storage.join(result.path, "summary.json")
    storage.write_record(path, result)
    return path


def read_sweep(path: str) -> SweepResult:
    """The sweep at STORAGE/NAME (its folder, or its summary.json)."""
    return storage.read_record(SweepResult, path if path.endswith(".json") else storage.join(path, "summary.json"))


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
        mean, std = mean_std(values)
        out.append({**dict(zip(SWEPT, pair)), "seeds": len(values), f"{metric}_mean": mean, f"{metric}_std": std,
                    "trials": [r["trial"] for r in trials]})
    return out


def best_trial(rows: list[dict], metric: str) -> dict:
    """The best weight pair by the mean of `metric` over its seeds (ties: the first), and of its trials the
    one of the lowest seed that reported it (not its best seed, which would pick the luckiest run):
    that trial's row with the pair's METRIC_mean, METRIC_std and seeds."""
    pairs = [p for p in weight_rows(rows, metric) if p["seeds"]]
    if not pairs:
        raise RuntimeError(f"no trial reported '{metric}' (statuses: {[r['status'] for r in rows]})")
    sign = 1.0 if higher_is_better(metric) else -1.0
    pair = max(pairs, key=lambda p: sign * p[f"{metric}_mean"])
    trial = min((r for r in rows if r["trial"] in pair["trials"] and r.get(metric) is not None),
                key=lambda r: r.get("seed", 0))
    return {**trial, **{k: pair[k] for k in (f"{metric}_mean", f"{metric}_std", "seeds")}}


log = logging.getLogger(__name__)


def trial_driver(config: dict, base: dict, runs_dir: str) -> None:
    """Tune trainable: fit one TorchTrainer with this trial's loss weights; Train reports reach Tune
    (one Tune iteration per epoch) through TuneReportCallback. The run is named after the trial id,
    which Tune keeps across a restore, so a resumed trial continues its own Train run."""
    cfg = trial_pretrain_config(config, base, tune.get_context().get_trial_id(), runs_dir)
    run_pretrain(cfg, callbacks=[TuneReportCallback()])


def sweep_dir(cfg: SweepConfig) -> str:
    """STORAGE/NAME, a local folder or a URI."""
    return storage.join(storage.absolute(cfg.storage), cfg.name)


def make_tuner(cfg: SweepConfig, trainable: Callable[..., None] = trial_driver) -> tune.Tuner:
    """A new Tuner, or the interrupted one restored when STORAGE/NAME holds a sweep of this config."""
    path = sweep_dir(cfg)
    saved = storage.join(path, "sweep_config.json")
    # The base config and the runs folder are the same for every trial: parameters, not search space.
    wrapped = tune.with_resources(
        tune.with_parameters(trainable, base=to_dict(cfg.pretrain), runs_dir=storage.join(path, "runs")),
        trial_resources(cfg))
    if tune.Tuner.can_restore(path):
        if storage.is_file(saved) and storage.read_json(saved) != to_dict(cfg):
            raise SystemExit(f"{path} holds a sweep with another config ({saved}); "
                             f"choose another name=... or storage=..., or delete that folder")
        log.info("sweep: resuming %s (trial runs there: %d; finished trials are kept, the others continue from "
                 "their last checkpoint)", path, len(storage.list_dir(storage.join(path, "runs"))))
        return tune.Tuner.restore(path, trainable=wrapped, resume_errored=True)
    storage.write_json(saved, to_dict(cfg))
    scheduler = None
    if cfg.asha.enabled:
        # One Tune iteration = one epoch (TuneReportCallback forwards each ray.train.report).
        scheduler = ASHAScheduler(max_t=cfg.pretrain.optim.epochs, grace_period=cfg.asha.grace_period,
                                  reduction_factor=cfg.asha.reduction_factor)
    return tune.Tuner(
        wrapped, param_space=param_space(cfg),
        tune_config=tune.TuneConfig(metric=cfg.metric, mode=metric_mode(cfg.metric), scheduler=scheduler,
                                    num_samples=cfg.num_samples,
                                    max_concurrent_trials=concurrent_trials(cfg, ray.cluster_resources())),
        run_config=tune.RunConfig(name=cfg.name, storage_path=storage.parent(path),
                                  callbacks=tune_callbacks(cfg.pretrain.tracking, cfg.name,
                                                           "" if storage.is_uri(path) else path)),
    )


def state_api_error() -> str | None:
    """Why the State API (served by the dashboard) of the Ray this process is connected to cannot be
    reached, or None when it can. The cluster's own address: left to find one, the State API gives up
    on a machine that runs several Ray instances."""
    from ray.util.state import list_actors
    from ray.util.state.exception import RayStateApiException

    try:
        list_actors(address=ray.get_runtime_context().gcs_address, limit=1, timeout=10)
    except RayStateApiException as e:
        return str(e).split(". ")[0]
    return None


def run_sweep(cfg: SweepConfig, trainable: Callable[..., None] = trial_driver) -> SweepResult:
    """Run (or resume) the sweep; returns the result also written to STORAGE/NAME/summary.json."""
    # Trial drivers run in their own working directories: make the data path absolute.
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain,
                                                                shards=storage.absolute(cfg.pretrain.shards)))
    storage.check_storage(cfg.pretrain.shards, "pretrain.shards", write=False)
    storage.check_storage(storage.absolute(cfg.storage), "storage")
    t0 = time.perf_counter()
    init_ray()
    # A trial that ASHA stops (also at its last epoch) is killed mid-fit; Ray Train then removes its
    # workers' placement group from a watcher that asks the State API whether the run's controller
    # is alive. Without that API the group, and its CPUs/GPUs, stay reserved until the sweep ends,
    # and a later trial waits forever for them (docs/ray-notes.md).
    if cfg.asha.enabled and (reason := state_api_error()):
        raise SystemExit(f"sweep: asha.enabled=true needs Ray's State API, which the dashboard serves ({reason}): "
                         "Ray Train frees the workers of a trial that ASHA stops through it. Start Ray with its "
                         "dashboard (ray start --head --include-dashboard=true, with pip install 'ray[default]'), "
                         "or set asha.enabled=false")
    path = sweep_dir(cfg)
    log.info("sweep: %d trials of %d epochs, %d at a time, best by %s (%s) -> %s", num_trials(cfg),
             cfg.pretrain.optim.epochs, concurrent_trials(cfg, ray.cluster_resources()), cfg.metric, metric_mode(cfg.metric), path)
    grid = make_tuner(cfg, trainable).fit()
    if grid.num_terminated + grid.num_errors < len(grid):  # Tune returns early on Ctrl-C (state saved)
        raise SystemExit(f"sweep interrupted with {len(grid) - grid.num_terminated - grid.num_errors} trials "
                         f"unfinished; run the same command again to resume {path}")
    results = [{"trial_id": (r.metrics or {}).get("trial_id", storage.name(r.path)),
                "config": r.config, "metrics": r.metrics, "status": "ERROR" if r.error else "TERMINATED",
                "epochs_planned": cfg.pretrain.optim.epochs} for r in grid]
    rows = sorted(trial_rows(results, cfg.metric, storage.join(path, "runs")),
                  key=lambda r: (r["lambda_scene"], r["lambda_mask"], r["seed"]))
    best = best_trial(rows, cfg.metric)
    by_weights = weight_rows(rows, cfg.metric)
    summary = SweepResult(metric=cfg.metric, mode=metric_mode(cfg.metric), selection=selection(cfg), path=str(path),
                          trials=rows, best=best,
                          by_weights=by_weights, seeds=cfg.seeds, errors=[str(r.error) for r in grid if r.error],
                          wall_s=round(time.perf_counter() - t0, 1), config=to_dict(cfg))
    write_sweep(summary)
    plot_sweep(rows, cfg.metric, best["trial"], storage.join(path, "sweep.png"))
    histories = {r["trial"]: runs.read_metrics(r["run"]) for r in rows}
    plot_curves(histories, list(dict.fromkeys(["train_loss", "train_acc", cfg.metric])), storage.join(path, "curves.png"))
    log.info("trials:\n%s", table(rows, ["trial", *SWEPT, "seed", cfg.metric, "epochs", "stopped_early", "status"]))
    if len(cfg.seeds) > 1:
        log.info("over the seeds %s:\n%s", cfg.seeds, table(by_weights, [*SWEPT, "seeds", f"{cfg.metric}_mean", f"{cfg.metric}_std"]))
    log.info("sweep: best %s=%.3f (mean over %d seeds, std %.3f) at lambda_scene=%g, lambda_mask=%g (trial %s); "
             "%d errored; summary: %s  plots: %s, %s",
             cfg.metric, best[f"{cfg.metric}_mean"], best["seeds"], best[f"{cfg.metric}_std"], best["lambda_scene"],
             best["lambda_mask"], best["trial"],
             len(summary.errors), storage.join(path, "summary.json"), storage.join(path, "sweep.png"),
             storage.join(path, "curves.png"))
    return summary
