"""Experiment tracking beside the run folder's own files: MLflow and Weights & Biases, through Ray's integrations.

Ray Train runs (rank 0 of the worker loop) use `Tracker`, built on `ray.air.integrations.mlflow.setup_mlflow`
and `ray.air.integrations.wandb.setup_wandb`; Ray Tune sweeps pass `tune_callbacks` (Ray's
`MLflowLoggerCallback` / `WandbLoggerCallback`, which log every trial's reported results from the driver).
Both are off by default and need the `tracking` extra (`pip install -e .[tracking]`).

MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE=true ("maintenance mode"); a local folder
as `mlflow_uri` sets that, since a file store needs no server and is what a single machine wants.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Literal

from debias import storage
from debias.config import check


@dataclass
class TrackingConfig:
    # "" = off; a local folder (an MLflow file store, browsed with `mlflow ui --backend-store-uri file://DIR`)
    # or a tracking server's http(s):// URL
    mlflow_uri: str = ""
    mlflow_experiment: str = "debias"
    # offline: W&B files under wandb_dir, uploaded later with `wandb sync`; online needs WANDB_API_KEY
    wandb_mode: Literal["off", "offline", "online"] = "off"
    wandb_project: str = "debias"
    wandb_dir: str = ""  # "" = the run folder (for a run on object storage: TMPDIR/debias-wandb)

    def __post_init__(self) -> None:
        check(not self.mlflow_uri or not storage.is_uri(self.mlflow_uri)
              or self.mlflow_uri.startswith(("http://", "https://", "file://")), "mlflow_uri",
              f"must be a local folder or an MLflow server's http(s):// URL, got {self.mlflow_uri!r}")
        check(not self.wandb_dir or not storage.is_uri(self.wandb_dir), "wandb_dir",
              "must be a local folder (W&B writes its files through the local file system)")

    @property
    def enabled(self) -> bool:
        return bool(self.mlflow_uri) or self.wandb_mode != "off"


def mlflow_tracking_uri(uri: str) -> str:
    """A server URL as given; a local folder as an absolute file:// URI, with the file store allowed."""
    if uri.startswith(("http://", "https://")):
        return uri
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return "file://" + storage.absolute(path)


def wandb_env(mode: str) -> None:
    """Ray's W&B setup asks for an API key unless WANDB_MODE says offline; offline needs none."""
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of an epoch (confusion matrices, names and flags are not tracked values)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """Rank 0's tracking of one training run: its config as parameters, then its metrics per epoch.

    `params`: the run's config (Ray flattens nested keys with "/": optim/lr). `run_dir`: the run folder, where W&B
    keeps its files unless `wandb_dir` says otherwise. A resumed run continues the same W&B run (its id is
    the run's name); MLflow starts a new run under the same name.
    """

    def __init__(self, cfg: TrackingConfig, run_name: str, params: dict, run_dir: str) -> None:
        self.mlflow = self.wandb = None
        if cfg.mlflow_uri:
            from ray.air.integrations.mlflow import setup_mlflow

            self.mlflow = setup_mlflow(config=params, tracking_uri=mlflow_tracking_uri(cfg.mlflow_uri),
                                       experiment_name=cfg.mlflow_experiment, run_name=run_name,
                                       create_experiment_if_not_exists=True)
        if cfg.wandb_mode != "off":
            from ray.air.integrations.wandb import setup_wandb

            wandb_env(cfg.wandb_mode)
            # W&B writes through the local file system: a run on object storage keeps its W&B files locally
            folder = cfg.wandb_dir or (run_dir if not storage.is_uri(run_dir) else
                                       os.path.join(tempfile.gettempdir(), "debias-wandb"))
            storage.makedirs(folder)
            # Ray's Train V2 workers have no V1 session, so setup_wandb's rank-0 check does not apply:
            # the caller is rank 0. The id is the run name (W&B ids may not hold slashes, #, ?, % or :), so a
            # resumed run appends to the same W&B run.
            run_id = re.sub(r"[/\\#?%:]", "-", run_name)[:64]
            self.wandb = setup_wandb(config=params, project=cfg.wandb_project, mode=cfg.wandb_mode,
                                     dir=storage.absolute(folder), trial_id=run_id, trial_name=run_name)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        values = numeric(metrics)
        if self.mlflow is not None:
            self.mlflow.log_metrics(values, step=step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def log_file(self, path: str) -> None:
        """An artifact (a plot, a model card) with the run; MLflow copies it, W&B saves it."""
        if self.mlflow is not None:
            self.mlflow.log_artifact(path)
        if self.wandb is not None:
            self.wandb.save(path, base_path=os.path.dirname(path), policy="now")

    def close(self) -> None:
        if self.mlflow is not None:
            self.mlflow.end_run()
        if self.wandb is not None:
            self.wandb.finish()


def tune_callbacks(cfg: TrackingConfig, experiment: str, wandb_dir: str = "") -> list:
    """Ray Tune callbacks that log each trial's config and reported results: `tune.RunConfig(callbacks=...)`.
    `wandb_dir`: where offline W&B files go when `cfg.wandb_dir` is empty (the sweep's folder)."""
    callbacks: list = []
    if cfg.mlflow_uri:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=mlflow_tracking_uri(cfg.mlflow_uri),
                                              experiment_name=cfg.mlflow_experiment or experiment))
    if cfg.wandb_mode != "off":
        from ray.air.integrations.wandb import WandbLoggerCallback

        wandb_env(cfg.wandb_mode)
        folder = storage.absolute(cfg.wandb_dir or wandb_dir or ".")
        storage.makedirs(folder)
        callbacks.append(WandbLoggerCallback(project=cfg.wandb_project, group=experiment, mode=cfg.wandb_mode,
                                             dir=folder))
    return callbacks
