"""A user's chain of `ray job submit --runtime-env runtime_env.yaml` jobs on a cluster of two nodes started
with `ray start` (a head, then a second node joining it), with token authentication: a relative path is
refused before any work, curation, a training run on 2 DDP workers stopped with `ray job stop` and
submitted again (it says where it resumes), and a transfer from that run; no job leaves a process
behind (but Ray's own detached actors, named below), and the upload holds the code only."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import JOB_MARKER, left_behind
from debias.cluster import free_port
from debias.curation.shards import read_summary
from debias.curation.synth import SynthConfig, generate
from debias.experiments.transfer import read_transfer

pytestmark = pytest.mark.slow  # a two-node cluster and a chain of submitted jobs

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
TINY_DATA = ["decode.num_frames=8", "labels.mask_provider=annotations", "labels.scene_provider=annotations"]
RAY_DATA_DETACHED = frozenset({"ray::_StatsActor", "ray::ActorLocationTracker", "ray::_AutoscalingCoordinatorActor",
                               "ray::_UsageCollectionActor"})
# Ray Train's detached PlacementGroupCleaner of a stopped run frees the run's placement group once Ray's
# State API says the run's controller is dead, then exits; it polls that API with a 10 s timeout and,
# under load, was seen alive minutes after the stop (Ray's behaviour, not the job's)
CLEANER = frozenset({"ray::PlacementGroupCleaner"})
TINY_MODEL = ["optim.batch_size=8", "model.width=4", "clip.clip_len=8", "tensorboard=false", "loader.clip_cpus=0.25"]


def ray_start(env: dict, log: Path, *args: str) -> subprocess.Popen:
    """`ray start --block ...`: the node's processes stay tied to one process this test can stop (`ray
    stop` would also kill any other Ray on the machine). Its output goes to a file: a full pipe would
    stall the node."""
    return subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                             # own agent port: the default (52365) may be held by another node on the machine
                             f"--dashboard-agent-listen-port={free_port()}", *args],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A head (2 CPUs) and a second node (2 CPUs) joining it, in their own HOME so that the auth token
    never touches the user's ~/.ray. Yields the environment a user's shell would have and the dashboard
    address."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # no drain on SIGTERM: Ray 2.60 otherwise waits 30 s for the node's idle workers before it stops
    env.update(HOME=str(home), RAY_AUTH_MODE="token", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    gcs, dashboard = f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    nodes = [ray_start(env, home / "head.log", "--head", f"--port={gcs.rsplit(':', 1)[1]}", f"--temp-dir={temp_dir}",
                       "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard.rsplit(':', 1)[1]}",
                       "--include-dashboard=true", "--num-cpus=2")]
    deadline = time.time() + 120
    while subprocess.run([RAY, "job", "list", "--address", dashboard], env=env, capture_output=True).returncode != 0:
        assert nodes[0].poll() is None and time.time() < deadline, (home / "head.log").read_text()[-3000:]
        time.sleep(2)
    nodes.append(ray_start(env, home / "node.log", f"--address={gcs}", "--num-cpus=2"))
    while "4.0 CPU" not in subprocess.run([RAY, "status", f"--address={gcs}"], env=env, capture_output=True, text=True).stdout:
        assert nodes[1].poll() is None and time.time() < deadline, (home / "node.log").read_text()[-3000:]
        time.sleep(2)
    yield {**env, "RAY_ADDRESS": dashboard}, Path(temp_dir)
    for node in reversed(nodes):
        node.terminate()
        node.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


class Jobs:
    """`ray job submit` and `ray job stop` as a user runs them, with runtime_env.yaml plus a marker variable
    that every process of a job inherits, to find them afterwards; status and logs from the job server."""

    def __init__(self, env: dict, tmp: Path) -> None:
        self.env, self.tmp = env, tmp

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, "job", *args], capture_output=True, text=True, env=self.env, cwd=ROOT,
                              timeout=timeout)

    def marker(self, sid: str) -> str:
        return f"cluster-jobs-{os.getpid()}-{sid}"

    def submit(self, sid: str, *entrypoint: str) -> None:
        env = yaml.safe_load((ROOT / "runtime_env.yaml").read_text())
        env.update(working_dir=str(ROOT), env_vars={JOB_MARKER: self.marker(sid)})
        runtime_env = self.tmp / f"runtime_env_{sid}.yaml"
        runtime_env.write_text(yaml.safe_dump(env))
        deadline = time.time() + 120
        while True:
            done = self.ray("submit", "--no-wait", "--submission-id", sid, "--runtime-env", str(runtime_env),
                            "--", sys.executable, "-m", *entrypoint)
            # a fresh cluster's dashboard answers before the agent that starts jobs has registered
            if "No available agent" not in done.stderr or time.time() > deadline:
                break
            time.sleep(3)
        assert done.returncode == 0, done.stderr

    def api(self, path: str) -> dict:
        """GET the job server's REST API (what `ray job status` / `ray job logs` read), with the cluster's
        token. Polled from here: each `ray` CLI call costs about 1.5 s of CPU, taken from the jobs it polls."""
        token = (Path(self.env["HOME"]) / ".ray" / "auth_token").read_text().strip()
        request = urllib.request.Request(f"{self.env['RAY_ADDRESS']}/api/jobs/{path}",
                                         headers={"authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def logs(self, sid: str) -> str:
        return self.api(f"{sid}/logs")["logs"]

    def wait(self, sid: str, timeout_s: float = 400) -> str:
        """The job's end state: SUCCEEDED, FAILED or STOPPED."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if (status := self.api(sid)["status"]) in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(1)
        raise TimeoutError(f"job {sid} still running after {timeout_s} s:\n{self.logs(sid)[-3000:]}")

    def succeeds(self, sid: str, *entrypoint: str) -> str:
        """Submit, wait; the job must succeed and leave no process behind, but Ray Data's cluster-wide
        singletons (_StatsActor and kin: named, detached by design, started by whichever job first needs
        each one). Its log."""
        self.submit(sid, *entrypoint)
        assert self.wait(sid) == "SUCCEEDED", self.logs(sid)[-4000:]
        assert left_behind(self.marker(sid), 60, ignore=RAY_DATA_DETACHED) == {}
        return self.logs(sid)

    def wait_for(self, condition, what: str, sid: str, timeout_s: float = 400) -> None:
        deadline = time.time() + timeout_s
        while not condition():
            assert time.time() < deadline, f"{what} not seen in {timeout_s} s:\n{self.logs(sid)[-3000:]}"
            time.sleep(1)


@pytest.mark.timeout(1200)  # five jobs in turn, each its own driver on the cluster
def test_a_users_chain_of_submitted_jobs(ray_cluster, tmp_path):
    env, temp_dir = ray_cluster
    jobs = Jobs(env, tmp_path)
    generate(SynthConfig(out=str(tmp_path / "synth"), train_per_class=3, val_per_class=1, ood_val_per_class=1, ood_test_per_class=1,
                         target_train_per_class=0, target_test_per_class=0, frame_size_px=32, num_frames=8))
    manifest = f"input.manifest={tmp_path / 'synth' / 'source' / 'manifest.csv'}"

    # 1. A relative output path fails before any work, naming the key (it would land in Ray's copy of the code).
    jobs.submit("relative", "ray_jobs.preprocess", "--out", "out/shards", manifest, *TINY_DATA)
    assert jobs.wait("relative", 120) == "FAILED"
    assert "config error: relative path in a submitted Ray job: out=out/shards." in jobs.logs("relative")

    # 2. The same with an absolute path: curated, and the driver says where its outputs went.
    shards = tmp_path / "shards"
    log = jobs.succeeds("curate", "ray_jobs.preprocess", "--out", str(shards), manifest, *TINY_DATA)
    summary = read_summary(str(shards))
    assert (summary["videos_ok"], summary["videos_failed"]) == (36, 0)
    assert f"summary: {shards}/runs/{summary['run_id']}/summary.json" in log
    # The upload holds the code only: the excludes keep .git, virtual environments and outputs out.
    uploaded = [p for p in (temp_dir / "session_latest" / "runtime_resources" / "working_dir_files").glob("_ray_pkg_*") if p.is_dir()]
    assert uploaded
    for package in uploaded:
        assert (package / "debias").is_dir() and (package / "ray_jobs").is_dir()
        assert not any((package / name).exists() for name in (".git", ".venv", ".venv-ci", "out"))
        assert sum(f.stat().st_size for f in package.rglob("*") if f.is_file()) < 5 * 2**20

    # 3. Training on 2 DDP workers, stopped with `ray job stop` once it has a checkpoint ...
    run = tmp_path / "runs" / "sdn"
    train = ("ray_jobs.pretrain", f"shards={shards}", f"out={tmp_path / 'runs'}", "name=sdn", "optim.epochs=40", "eval_splits=[val]",
             "scaling.num_workers=2", "scaling.cpus_per_worker=1", *TINY_MODEL)
    jobs.submit("train", *train)
    snapshot = run / "checkpoint_manager_snapshot.json"
    jobs.wait_for(lambda: snapshot.is_file() and "checkpoint_dir_name" in snapshot.read_text(), "a checkpoint", "train")
    assert "pretrain: starting" in jobs.logs("train")
    assert jobs.ray("stop", "train").returncode == 0
    assert jobs.wait("train", 120) == "STOPPED"
    # The entrypoint and its Train workers, on both nodes (Ray's detached actors excepted, see CLEANER).
    assert left_behind(jobs.marker("train"), 60, ignore=RAY_DATA_DETACHED | CLEANER) == {}

    # ... and submitted again: its first lines say it resumes, and from which epoch.
    done = max(json.loads(snapshot.read_text())["checkpoint_results"], key=lambda r: r["metrics"]["epoch"])
    jobs.submit("train-again", *train)
    resumed = re.compile(rf"pretrain: resuming {run} from epoch (\d+) of 40 \(its checkpoint checkpoint_epoch_\d+\)")
    jobs.wait_for(lambda: resumed.search(jobs.logs("train-again")), "the resume line", "train-again")
    log = jobs.logs("train-again")
    assert int(resumed.search(log).group(1)) >= done["metrics"]["epoch"] + 2  # the epoch after a registered checkpoint
    assert not re.search(r"\[sdn\] epoch \d+/40", log[:resumed.search(log).start()])  # before any epoch ran
    assert jobs.ray("stop", "train-again").returncode == 0
    assert jobs.wait("train-again", 120) == "STOPPED"
    assert left_behind(jobs.marker("train-again"), 60, ignore=RAY_DATA_DETACHED | CLEANER) == {}

    # 4. Transfer from that run and from scratch, with the shipped config: every relative path in it (the
    # pretrained runs, the target's shards) replaced on the command line, mappings given whole. (A sweep
    # is the same kind of job: Tune's trials, tests/test_sweep.py; a whole pipeline, tests/test_s3.py.)
    out = tmp_path / "transfer"
    log = jobs.succeeds("transfer", "ray_jobs.transfer", "--config", "configs/transfer/synth.yaml", f"out={out}",
                        f"pretrained={{sdn: {run}, scratch: ''}}", f"source_shards={shards}",
                        f"targets={{target: {{folds: [{{shards: {shards}, train: train, test: val}}]}}}}",
                        "finetune.optim.epochs=1", *(f"finetune.{o}" for o in TINY_MODEL),
                        "bias.clip_len=8", "bias.probe_steps=50")
    transfer = read_transfer(str(out))
    assert {r["pretrain"] for r in transfer.transfer} == {"sdn", "scratch"}
    assert all(0 <= r["top1"] <= 1 and r["epochs"] == 1 for r in transfer.transfer)
    assert set(transfer.bias) == {"sdn"}  # scene bias is measured on pretrained models
    assert f"summary: {out / 'summary.json'}" in log


def test_submit_without_the_token_is_refused(ray_cluster, tmp_path):
    env, _temp_dir = ray_cluster
    no_token = {**env, "HOME": str(tmp_path)}  # a HOME without the cluster's token
    listing = subprocess.run([RAY, "job", "list"], env=no_token, capture_output=True, text=True)
    # refused for the missing token, not for another reason (a wrong address, a crash)
    assert listing.returncode != 0 and re.search(r"(?i)auth", listing.stdout + listing.stderr), listing.stderr[-2000:]
