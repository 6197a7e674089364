"""Tracking through Ray's own integrations, offline: MLflow to a local file store, W&B in offline mode.

A real Ray Train run (one worker) logs through `Tracker` from rank 0, and a real Ray Tune run logs its
trials through `tune_callbacks`; the MLflow file store and W&B's offline run files are then read back.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import ray.cloudpickle

from debias.config import ConfigError, to_dict
from debias.training.tracking import TrackingConfig


# The loops below travel to Ray's workers by value: tests/ is no package those processes can import.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _client(store: Path):
    from mlflow.tracking import MlflowClient

    from debias.training.tracking import mlflow_tracking_uri

    return MlflowClient(mlflow_tracking_uri(str(store)))


def _train_loop(config: dict) -> None:
    import ray.train

    from debias.config import from_dict
    from debias.training.tracking import Tracker

    tracker = None
    if ray.train.get_context().get_world_rank() == 0:
        tracker = Tracker(from_dict(TrackingConfig, config["tracking"]), "tiny-run",
                          {"optim": {"lr": 0.05}, "loss": {"lambda_scene": 0.2}}, config["run_dir"])
    for epoch in range(2):
        metrics = {"epoch": epoch, "val_acc": 0.5 + 0.25 * epoch, "val_confusion": [[1, 0], [0, 1]]}
        if tracker:
            tracker.log(metrics, step=epoch)
        ray.train.report(metrics)
    if tracker:
        tracker.close()


def test_a_train_run_logs_params_and_metrics_to_mlflow_and_wandb_offline(tmp_path, ray_local):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = TrackingConfig(mlflow_uri=str(tmp_path / "mlruns"), mlflow_experiment="train-test", wandb_mode="offline")
    trainer = TorchTrainer(_train_loop, train_loop_config={"tracking": to_dict(cfg), "run_dir": str(tmp_path / "run")},
                           scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(name="tracked", storage_path=str(tmp_path / "ray")))
    trainer.fit()

    client = _client(tmp_path / "mlruns")
    [run] = client.search_runs([client.get_experiment_by_name("train-test").experiment_id])
    assert run.info.run_name == "tiny-run" and run.info.status == "FINISHED"
    assert run.data.params["optim/lr"] == "0.05" and run.data.params["loss/lambda_scene"] == "0.2"
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.75)]
    assert "val_confusion" not in run.data.metrics  # matrices are not scalar metrics

    # W&B offline: the run's records are in its .wandb file under the run folder, for `wandb sync` later.
    [record] = (tmp_path / "run" / "wandb").glob("offline-run-*-tiny-run/run-tiny-run.wandb")
    data = record.read_bytes()
    assert b"val_acc" in data and b"0.75" in data and b"lambda_scene" in data


def _trial(config: dict) -> None:
    from ray import tune

    for step in range(2):
        tune.report({"score": config["x"] * (step + 1)})


@pytest.mark.slow
def test_a_tune_run_logs_every_trial_to_mlflow(tmp_path, ray_local):
    from ray import tune

    from debias.training.tracking import tune_callbacks

    cfg = TrackingConfig(mlflow_uri=str(tmp_path / "mlruns"), mlflow_experiment="sweep-test")
    tuner = tune.Tuner(_trial, param_space={"x": tune.grid_search([1, 3])},
                       run_config=tune.RunConfig(name="sweep", storage_path=str(tmp_path / "tune"),
                                                 callbacks=tune_callbacks(cfg, "sweep")))
    assert not tuner.fit().errors

    client = _client(tmp_path / "mlruns")
    runs = client.search_runs([client.get_experiment_by_name("sweep-test").experiment_id])
    assert sorted(r.data.params["x"] for r in runs) == ["1", "3"]
    assert sorted(r.data.metrics["score"] for r in runs) == [2.0, 6.0]  # the last report of each trial


def test_bad_tracking_config_names_the_key():
    with pytest.raises(ConfigError, match="mlflow_uri"):
        TrackingConfig(mlflow_uri="s3://bucket/mlruns")
    with pytest.raises(ConfigError, match="wandb_dir"):
        TrackingConfig(wandb_mode="offline", wandb_dir="s3://bucket/wandb")
