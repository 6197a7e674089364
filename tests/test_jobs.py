"""`ray job submit` against a real local head started with `ray start`, with token authentication."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from debias.config import load_config
from debias.curation.shards import read_summary
from debias.curation.synth import SynthConfig
from debias.cluster import free_port
from debias.curation.synth import run_synth

pytestmark = pytest.mark.slow  # a `ray start` head and submitted jobs

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A head node on 127.0.0.1 in its own HOME, so its auth token never touches the user's ~/.ray."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # no drain on SIGTERM: Ray 2.60 otherwise waits 30 s for the node's idle workers before it stops
    env.update(HOME=str(home), RAY_AUTH_MODE="token", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    address = f"http://127.0.0.1:{free_port()}"
    # --block keeps this head's processes tied to one process we can stop; `ray stop` would also kill
    # any other Ray instance on the machine.
    log = open(home / "ray-start.log", "w")  # a file, not a pipe: a full pipe would stall the head
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    head = subprocess.Popen([RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
                             f"--temp-dir={temp_dir}",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={address.rsplit(':', 1)[1]}",
                             # own agent port: the default (52365) may be held by another Ray on the machine
                             f"--dashboard-agent-listen-port={free_port()}",
                             "--num-cpus=4", "--include-dashboard=true", "--disable-usage-stats"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True).returncode != 0:
        assert head.poll() is None and time.time() < deadline, f"ray start failed: {(home / 'ray-start.log').read_text()[-3000:]}"
        time.sleep(2)
    yield env, address, Path(temp_dir)
    head.terminate()
    head.wait(timeout=60)
    log.close()
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_submit_runs_a_driver_on_the_cluster_and_succeeds(ray_head, tmp_path):
    """The preprocess driver (Ray Data tasks and actors, so the uploaded code must reach the workers)
    on a tiny synthetic benchmark; the whole chain's drivers are tested in-process elsewhere."""
    env, address, temp_dir = ray_head
    run_synth(load_config(SynthConfig, None, [f"out={tmp_path / 'synth'}", "train_per_class=1", "val_per_class=1",
                                              "ood_val_per_class=0", "ood_test_per_class=0", "target_train_per_class=0", "target_test_per_class=0",
                                              "frame_size_px=32", "num_frames=8"]))
    out = tmp_path / "data"
    command = [RAY, "job", "submit", "--address", address, "--submission-id", "debias-job-test",
               "--runtime-env", str(ROOT / "runtime_env.yaml"), "--", "python", "-m", "ray_jobs.preprocess",
               f"input.manifest={tmp_path / 'synth' / 'source' / 'manifest.csv'}", f"out={out}",
               "decode.num_frames=8", "labels.mask_provider=annotations", "labels.scene_provider=annotations"]
    deadline = time.time() + 300  # a fresh head answers before its job agent is up ("try again later")
    while True:
        submit = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent" not in submit.stdout + submit.stderr or time.time() > deadline:
            break
        time.sleep(3)
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-2000:]
    assert "succeeded" in submit.stdout.lower()
    status = subprocess.run([RAY, "job", "status", "--address", address, "debias-job-test"],
                            env=env, capture_output=True, text=True, check=True)
    assert "debias-job-test' succeeded" in status.stdout  # ray prints "Job 'ID' succeeded"
    summary = read_summary(str(out))
    assert (summary["videos_ok"], summary["videos_failed"]) == (12, 0)
    logs = subprocess.run([RAY, "job", "logs", "--address", address, "debias-job-test"],
                          env=env, capture_output=True, text=True, check=True).stdout
    assert f"summary: {out}/runs/{summary['run_id']}/summary.json" in logs  # the driver says where its outputs went
    # The upload holds the code only: the excludes keep .git, virtual environments and outputs out.
    packages = temp_dir / "session_latest" / "runtime_resources" / "working_dir_files"
    uploaded = [p for p in packages.glob("_ray_pkg_*") if p.is_dir()]
    assert len(uploaded) == 1, uploaded
    assert (uploaded[0] / "debias").is_dir() and (uploaded[0] / "ray_jobs").is_dir()
    assert not any((uploaded[0] / name).exists() for name in (".git", ".venv", ".venv-ci", "out"))
    assert sum(f.stat().st_size for f in uploaded[0].rglob("*") if f.is_file()) < 5 * 2**20


def test_submit_without_the_token_is_refused(ray_head):
    env, address, _temp_dir = ray_head
    no_token = {**env, "HOME": str(Path(env["HOME"]) / "elsewhere")}
    shutil.rmtree(no_token["HOME"], ignore_errors=True)
    Path(no_token["HOME"]).mkdir()
    listing = subprocess.run([RAY, "job", "list", "--address", address], env=no_token, capture_output=True, text=True)
    # refused for the missing token, not for another reason (a wrong address, a crash)
    assert listing.returncode != 0 and re.search(r"(?i)auth", listing.stdout + listing.stderr), listing.stderr[-2000:]
