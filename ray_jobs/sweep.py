"""Sweep: Ray Tune over the SDN loss weights, each trial a Ray Train run, with ASHA early stopping.

    python -m ray_jobs.sweep --config configs/sweep/quick.yaml [key=value ...]

Trials report every epoch (so ASHA can stop the weak ones); the best trial is chosen by `metric`.
Running the same STORAGE/NAME again resumes an interrupted sweep (Tuner.restore): finished trials are
kept, unfinished and errored ones continue from their last checkpoint. Writes STORAGE/NAME/summary.json,
sweep.png (each trial's final metric over the two weights) and curves.png (each trial's epochs).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from debias import runs, storage
from debias.cluster import init_ray
from debias.config import to_dict
from debias.pretrain import run_pretrain
from debias.report import plot_curves, plot_sweep, table
from debias.sweep import (SWEPT, SweepConfig, best_trial, concurrent_trials, num_trials, param_space, selection,
                          trial_pretrain_config, trial_resources, trial_rows, weight_rows)
from debias.tracking import tune_callbacks
from ray_jobs.common import job_parser, load_job_config

log = logging.getLogger("ray_jobs.sweep")  # not __name__: under `python -m` that is __main__


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
        log.info("sweep: resuming %s", path)
        return tune.Tuner.restore(path, trainable=wrapped, resume_errored=True)
    storage.write_json(saved, to_dict(cfg))
    scheduler = None
    if cfg.asha.enabled:
        # One Tune iteration = one epoch (TuneReportCallback forwards each ray.train.report).
        scheduler = ASHAScheduler(max_t=cfg.pretrain.optim.epochs, grace_period=cfg.asha.grace_period,
                                  reduction_factor=cfg.asha.reduction_factor)
    return tune.Tuner(
        wrapped, param_space=param_space(cfg),
        tune_config=tune.TuneConfig(metric=cfg.metric, mode=cfg.mode, scheduler=scheduler,
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


def run_sweep(cfg: SweepConfig, trainable: Callable[..., None] = trial_driver) -> dict:
    """Run (or resume) the sweep; returns {"trials": [...], "best": {...}, "metric", "mode", "path"}."""
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
    # and a later trial waits forever for them (measured: 3 trials on 4 CPUs left 3 groups behind).
    if cfg.asha.enabled and (reason := state_api_error()):
        raise SystemExit(f"sweep: asha.enabled=true needs Ray's State API, which the dashboard serves ({reason}): "
                         "Ray Train frees the workers of a trial that ASHA stops through it. Start Ray with its "
                         "dashboard (ray start --head --include-dashboard=true, with pip install 'ray[default]'), "
                         "or set asha.enabled=false")
    path = sweep_dir(cfg)
    log.info("sweep: %d trials of %d epochs, %d at a time, best by %s (%s) -> %s", num_trials(cfg),
             cfg.pretrain.optim.epochs, concurrent_trials(cfg, ray.cluster_resources()), cfg.metric, cfg.mode, path)
    grid = make_tuner(cfg, trainable).fit()
    if grid.num_terminated + grid.num_errors < len(grid):  # Tune returns early on Ctrl-C (state saved)
        raise SystemExit(f"sweep interrupted with {len(grid) - grid.num_terminated - grid.num_errors} trials "
                         f"unfinished; run the same command again to resume {path}")
    results = [{"trial_id": (r.metrics or {}).get("trial_id", storage.name(r.path)),
                "config": r.config, "metrics": r.metrics, "status": "ERROR" if r.error else "TERMINATED",
                "epochs_planned": cfg.pretrain.optim.epochs} for r in grid]
    rows = sorted(trial_rows(results, cfg.metric, storage.join(path, "runs")),
                  key=lambda r: (r["lambda_scene"], r["lambda_mask"], r["seed"]))
    best = best_trial(rows, cfg.metric, cfg.mode)
    by_weights = weight_rows(rows, cfg.metric)
    summary = {"metric": cfg.metric, "mode": cfg.mode, "selection": selection(cfg), "path": str(path), "trials": rows, "best": best,
               "by_weights": by_weights, "seeds": cfg.seeds,
               "errors": [str(r.error) for r in grid if r.error], "wall_s": round(time.perf_counter() - t0, 1),
               "config": to_dict(cfg)}
    storage.write_json(storage.join(path, "summary.json"), summary)
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
             len(summary["errors"]), storage.join(path, "summary.json"), storage.join(path, "sweep.png"),
             storage.join(path, "curves.png"))
    return summary


def main(argv: list[str] | None = None) -> None:
    args = job_parser("debias sweep", __doc__).parse_args(argv)
    run_sweep(load_job_config(SweepConfig, args))


if __name__ == "__main__":
    main()
