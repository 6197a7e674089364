"""Inside a submitted Ray job, relative paths are refused before any work (debias.jobenv)."""

import os
import subprocess
import sys

import pytest

from debias.config import ConfigError, load_config, paths
from debias.evaluation.inference import PredictConfig
from debias.jobenv import SUBMITTED_JOB_ENV, check_job_paths, relative_paths
from debias.experiments.transfer import TransferConfig
from debias.experiments.demo import DemoConfig
from debias.experiments.pipeline import PipelineConfig


def test_path_fields_are_found_in_sections_lists_and_mappings():
    cfg = load_config(TransferConfig, None, ["pretrained={sdn: runs/sdn, scratch: ''}",
                                             "targets={t: {folds: [{shards: data/t}]}}"])
    found = dict(paths(cfg))
    assert found["pretrained.sdn"] == "runs/sdn" and found["targets.t.folds[0].shards"] == "data/t"
    assert found["finetune.model.init_from"] == "" and found["finetune.tracking.wandb_dir"] == ""
    assert dict(paths(PredictConfig(run="r", videos=["a.mp4", "/b.mp4"])))["videos[0]"] == "a.mp4"


def test_only_relative_paths_the_user_gives_are_refused(monkeypatch):
    cfg = load_config(TransferConfig, None, [
        "out=/mnt/shared/transfer", "source_shards=s3://bucket/shards", "pretrained={sdn: runs/sdn, base: ~/b, scratch: ''}",
        "targets={t: {folds: [{shards: 'file://data/t'}]}}", "finetune.shards=relative/but/set/per/run"])
    assert relative_paths(cfg) == [("pretrained.sdn", "runs/sdn")]  # finetune.shards: the job sets it
    check_job_paths(cfg)  # outside a submitted job: nothing to say
    monkeypatch.setenv(SUBMITTED_JOB_ENV, "{}")
    with pytest.raises(ConfigError, match=r"relative path in a submitted Ray job: pretrained\.sdn=runs/sdn\. .*absolute "
                                          r"path on storage every node sees .* or a URI"):
        check_job_paths(cfg)
    # paths a job derives from its own `out` are not the user's to give
    assert relative_paths(DemoConfig(out="/o")) == []
    pipeline = load_config(PipelineConfig, None, ["out=/o", "synth={}", "targets={t: {}}"])
    assert relative_paths(pipeline) == []
    real = load_config(PipelineConfig, None, ["out=/o", "targets={t: {preprocess: {input: {manifest: lists/t}}}}"])
    assert relative_paths(real) == [("targets.t.preprocess.input.manifest", "lists/t")]


def test_a_submitted_job_with_a_relative_path_stops_before_any_work(tmp_path):
    env = {**os.environ, SUBMITTED_JOB_ENV: "{}"}
    run = subprocess.run([sys.executable, "-m", "ray_jobs.pretrain", f"out={tmp_path}", "shards=out/shards"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 1 and run.stderr.startswith("config error: relative path in a submitted Ray job: shards=out/shards.")
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_ray_data_progress_in_a_log_is_the_total_once_a_minute(monkeypatch):
    """(A job's log is no terminal; the full-disk test in test_faults.py reads such a log.)"""
    import ray.data
    from ray.data._internal.progress.logging_progress import LoggingExecutionProgressManager

    from debias.cluster import PROGRESS_LOG_ENV, quiet_progress

    monkeypatch.delenv(PROGRESS_LOG_ENV, raising=False)
    monkeypatch.setattr(LoggingExecutionProgressManager, "LOG_REPORT_INTERVAL_SEC", 10)
    ctx = ray.data.DataContext.get_current()
    monkeypatch.setattr(ctx, "enable_operator_progress_bars", True)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    quiet_progress()
    assert LoggingExecutionProgressManager.LOG_REPORT_INTERVAL_SEC == 60 and os.environ[PROGRESS_LOG_ENV] == "60"
    assert not ctx.enable_operator_progress_bars


def test_a_job_that_reads_one_section_checks_only_its_paths(monkeypatch):
    from debias.curation.curate import PreprocessConfig

    monkeypatch.setenv(SUBMITTED_JOB_ENV, "{}")
    cfg = load_config(PreprocessConfig, None, ["labels.weights_dir=/w"])  # out and input stay relative
    check_job_paths(cfg, ("labels.*",))  # `debias weights` reads labels.* only
    with pytest.raises(ConfigError, match=r"labels\.weights_dir=weights"):
        check_job_paths(load_config(PreprocessConfig, None, ["labels.weights_dir=weights"]), ("labels.*",))
