"""Everything on object storage: a real S3-compatible server (moto's server mode) on 127.0.0.1.

The whole pipeline runs as a job (`python -m ray_jobs.pipeline`, a subprocess) with `out=s3://...`:
synth -> preprocess (its manifest, videos and annotations read back from the bucket) -> a sweep (Tune
storage in the bucket) -> transfer of its best and of scratch -> summary; the suite's only run
of the whole chain, so its results are checked here too. Every artifact must be in the bucket, nothing
in a local folder named after the URI, and no process of the job may outlive it; the same command again
skips every stage. Then a pretraining run on s3:// is killed mid-run and resumed from its checkpoint in
the bucket, ending where the same run never stopped ends.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import JOB_MARKER, PIPELINE_TINY, docs_render, left_behind, own_ray
from debias import storage
from debias.curation.shards import read_summary
from debias.experiments.pipeline import read_pipeline

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "debias-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 endpoint on 127.0.0.1 with an empty bucket; the standard AWS_* variables point at it (Ray's
    workers inherit them). Yields the bucket's URI."""
    boto3 = pytest.importorskip("boto3")
    # this environment's server first: another Python's moto on PATH may not match this one's clients
    server = str(Path(sys.executable).parent / "moto_server")
    server = server if Path(server).is_file() else shutil.which("moto_server") or server
    if not Path(server).is_file():
        pytest.skip("moto_server not installed (pip install -e '.[test]' brings moto[server])")
    from debias.cluster import free_port

    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "w")
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    own_ray()  # this module's Ray starts after the variables are set (its workers inherit them) and ends with them
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield f"s3://{BUCKET}"
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    own_ray()
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _keys(prefix: str) -> set[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def pipeline_job(out: str, cwd: Path, marker: str) -> subprocess.CompletedProcess:
    """The quick pipeline, shrunk to seconds per stage, as a job of its own (`python -m ray_jobs.pipeline`)."""
    return subprocess.run([sys.executable, "-m", "ray_jobs.pipeline", "--config", str(ROOT / "configs/pipeline/quick.yaml"),
                           *PIPELINE_TINY, f"out={out}"], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, JOB_MARKER: marker})


@pytest.mark.slow
def test_pipeline_job_on_s3_then_a_rerun_skips_every_stage(s3, tmp_path):
    """The suite's one run of the whole chain: synth -> preprocess (its manifest, videos and annotations
    read back from the bucket) -> a sweep (Tune storage in the bucket) -> transfer of its best and of
    scratch -> summary, all on s3://; then the same command again, every stage skipped."""
    out = f"{s3}/pipe"
    job = pipeline_job(out, tmp_path, "pipeline-s3")
    assert job.returncode == 0, job.stderr[-4000:]
    keys = _keys("pipe/")
    for key in ("pipe/summary.json", "pipe/report.md", "pipe/transfer.png", "pipe/pretrain_curves.png",
                "pipe/transfer_curves.png", "pipe/synth/source/manifest.csv", "pipe/data_source/_committed.json",
                "pipe/sweep/summary.json", "pipe/sweep/sweep_config.json", "pipe/transfer_seed0/summary.json",
                "pipe/transfer_seed0/report.md", "pipe/transfer_seed0/runs/scratch__target__split1/config.json"):
        assert key in keys, key
    assert any(k.startswith("pipe/data_source/runs/") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("pipe/transfer_seed0/runs/sweep_best__target__split1/checkpoint_epoch_") for k in keys)
    assert sum(k.startswith("pipe/sweep/runs/") and k.endswith("/config.json") for k in keys) == 1  # its trial
    assert any(k.startswith("pipe/sweep/runs/") and "/tensorboard/events.out.tfevents" in k for k in keys)
    local = [str(p) for p in tmp_path.rglob("*") if "s3:" in str(p) or BUCKET in str(p)]
    assert not local and not (ROOT / "s3:").exists(), local
    left = left_behind("pipeline-s3")
    assert not left, f"processes of the job outlived it: {left}"

    summary = read_pipeline(out)  # the record, read back from the bucket through its owner
    trials = summary.sweep["trials"]
    assert [(t["lambda_scene"], t["lambda_mask"], t["seed"]) for t in trials] == [(0.5, 1.0, 0)]
    metric = summary.sweep["metric"]
    assert summary.sweep["best"][metric] == max(t[metric] for t in trials)
    assert summary.sweep["best"]["run"].startswith(f"{out}/sweep/runs/")
    rows = summary.transfer
    assert {(r["pretrain"], r["target"], r["split"], r["seed"]) for r in rows} == {("scratch", "target", 1, 0),
                                                                                    ("sweep_best", "target", 1, 0)}
    test_videos = read_summary(f"{out}/data_target_split1")["ok_by_split"]["test"]
    assert all(r["epochs"] == 2 and r["top1"] * test_videos == pytest.approx(round(r["top1"] * test_videos))
               for r in rows)  # a share of the test videos, after both epochs
    # the fine-tuning started from the sweep's best trial's backbone; scratch from none
    run_cfg = storage.read_json(f"{out}/transfer_seed0/runs/sweep_best__target__split1/config.json")["config"]
    assert run_cfg["model"]["init_from"].startswith(f"{summary.sweep['best']['run']}/checkpoint_epoch_")
    scratch_cfg = storage.read_json(f"{out}/transfer_seed0/runs/scratch__target__split1/config.json")["config"]
    assert scratch_cfg["model"]["init_from"] == ""
    assert [c["comparison"] for c in summary.comparisons] == ["sweep_best - scratch"]
    assert [(b["pretrain"], b["seed"]) for b in summary.bias] == [("sweep_best", 0)]  # pretrained models only
    for bias in summary.bias:
        # the measures are the ones their definitions give from the reported parts (docs/pipeline.md)
        chance = bias["action_chance"]
        assert bias["representation_bias"] == pytest.approx(math.log(max(bias["scene_only_probe_acc"], chance) / chance))
        assert bias["counterfactual_drop"] == pytest.approx(bias["counterfactual_clean_acc"] - bias["counterfactual_acc"])
        assert bias["scene_mdl_compression"] == pytest.approx(bias["scene_mdl_uniform_bits"] / bias["scene_mdl_bits"])
        n = bias["videos"]["test"]
        for key in ("masked_action_acc", "counterfactual_acc", "counterfactual_follows_background"):
            assert bias[key] * n == pytest.approx(round(bias[key] * n)), key  # a share of videos
        # the field's measures beside them (SCUBA, HAT): the clean clips are the same pixels as the project's own
        assert bias["clean_top1"] == pytest.approx(bias["counterfactual_clean_acc"])
        assert bias["scuba_top1_stripes_low"] <= bias["scuba_top1_stripes"] <= bias["scuba_top1_stripes_high"]
    assert 0.0 < summary.dataset_bias["scene_label_action_acc"] <= 1.0  # once per dataset, not per model
    assert "sweep_best" in storage.read_text(f"{out}/report.md")
    assert "scuba_top1" in storage.read_text(f"{out}/report.md")  # the bias table has the field's columns
    # every README / docs block the pipeline records renders from what the pipeline writes now
    assert all(block for block in docs_render().render_recorded_by("debias pipeline", storage.read_json(f"{out}/summary.json")))

    again = pipeline_job(out, tmp_path, "pipeline-s3-again")
    assert again.returncode == 0, again.stderr[-4000:]
    rerun = read_pipeline(out)
    assert set(rerun.skipped) == {"synth", "data_source", "data_target_split1", "sweep", "transfer_seed0"}
    assert rerun.transfer == summary.transfer and rerun.sweep == summary.sweep


@pytest.mark.slow
def test_pretrain_on_s3_killed_mid_run_resumes_from_its_checkpoint_as_if_never_stopped(s3, ray_local):
    """A run on s3:// stopped (one Train worker SIGKILLed, no restarts left) after its first registered
    checkpoint, then started again: it resumes from that checkpoint in the bucket (no epoch up to it trained
    again), and its model, momentum buffers and loss curve equal those of the same run never stopped."""
    import dataclasses

    import torch

    from debias.training import runs
    from debias.training.clips import write_pattern_shards
    from debias.config import load_config
    from debias.training.pretrain import run_pretrain
    from debias.training.train import PretrainConfig

    shards = write_pattern_shards(f"{s3}/pattern", {"train": 64, "val": 16}, num_frames=8, size_px=32, rows_per_file=16)
    cfg = load_config(PretrainConfig, None, [
        f"shards={shards}", f"out={s3}/runs", "name=killed", "eval_splits=[val]", "optim.epochs=4",
        "optim.batch_size=16", "model.width=4", "clip.clip_len=8", "clip.crop_px=32", "scaling.cpus_per_worker=1",
        "loader.clip_cpus=0.25"])
    from test_train import _kill_after_first_checkpoint, _run_in_thread

    reference = run_pretrain(dataclasses.replace(cfg, name="whole"))
    thread, stopped = _run_in_thread(cfg)
    registered, _ = _kill_after_first_checkpoint(f"{s3}/runs/killed", thread)
    thread.join(timeout=300)
    assert "error" in stopped, "the run finished before it could be stopped"
    before = {m["epoch"]: m for m in runs.read_metrics(f"{s3}/runs/killed")}
    resumed = run_pretrain(cfg)  # the same run, started again
    assert [m["epoch"] for m in resumed["history"]] == [0, 1, 2, 3]
    # nothing up to the checkpoint trained again: those epochs keep their first lines, timings included
    assert set(range(registered + 1)) <= set(before)
    assert all(resumed["history"][e] == before[e] for e in range(registered + 1))
    assert resumed["checkpoint"] == f"{s3}/runs/killed/{runs.checkpoint_name(3)}"
    a, b = runs.load_state(reference["checkpoint"]), runs.load_state(resumed["checkpoint"])
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-4), key
    for i, state in a["optimizer"]["state"].items():
        assert torch.allclose(state["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"], atol=1e-4)
    for x, y in zip(reference["history"], resumed["history"], strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-4)
    model, info = runs.load_model(f"{s3}/runs/killed", "best")
    assert info.classes == [f"class_{k}" for k in range(4)] and info.checkpoint.startswith(f"{s3}/runs/killed/")
    assert any(k.startswith("runs/killed/tensorboard/events.out.tfevents") for k in _keys("runs/killed/"))


def test_a_bucket_that_vanished_mid_job_is_a_storage_fault_naming_it(s3):
    import boto3

    from debias import storage
    from debias.faults import storage_fault

    client = boto3.client("s3")
    client.create_bucket(Bucket="vanishing")
    storage.write_text("s3://vanishing/runs/a.json", "{}")
    client.delete_object(Bucket="vanishing", Key="runs/a.json")
    client.delete_bucket(Bucket="vanishing")
    with pytest.raises(OSError) as raised:  # pyarrow's own error, as a job meets it
        storage.write_text("s3://vanishing/runs/b.json", "{}")
    fault = storage_fault(raised.value)
    assert fault is not None, raised.value
    assert (fault.path, fault.fault) == ("vanishing", "the bucket does not exist (deleted, or these credentials cannot see it)")
