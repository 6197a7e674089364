"""Jobs submitted with `ray job submit --runtime-env runtime_env.yaml` to a two-node cluster, as a user
submits them: a relative path is refused before any work, a stopped training run resubmitted says where
it resumes, and a stopped job leaves no process behind."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import JOB_MARKER, left_behind
from debias.curation.synth import SynthConfig, generate

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
TINY_DATA = ["decode.num_frames=8", "labels.mask_provider=annotations", "labels.scene_provider=annotations"]
TINY_RUN = ["optim.batch_size=8", "model.width=4", "clip.clip_len=8", "eval_splits=[val]", "tensorboard=false",
            "scaling.num_workers=2", "scaling.cpus_per_worker=1", "loader.clip_cpus=0.25"]


class Jobs:
    """`ray job submit / stop / status / logs` against one cluster's dashboard, with runtime_env.yaml
    (plus a marker variable that every process of a job inherits, to find them afterwards)."""

    def __init__(self, cluster, tmp: Path) -> None:
        self.address, self.tmp = f"http://{cluster.webui_url}", tmp
        self.env = {**os.environ, "RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token"}
        self.env.pop("RAY_JOB_CONFIG_JSON_ENV_VAR", None)

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

    def logs(self, sid: str) -> str:
        done = self.ray("logs", sid)
        return done.stdout + done.stderr

    def wait(self, sid: str, timeout_s: float = 400) -> str:
        """The job's end state: SUCCEEDED, FAILED or STOPPED."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            done = self.ray("status", sid)
            out = done.stdout + done.stderr  # the CLI's logger writes to stderr
            if ended := re.search(r"Job '\S+' (succeeded|failed|was stopped)", out):
                return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[ended.group(1)]
            time.sleep(2)
        raise TimeoutError(f"job {sid} still running after {timeout_s} s:\n{self.logs(sid)[-3000:]}")

    def wait_for(self, condition, what: str, sid: str, timeout_s: float = 400) -> None:
        deadline = time.time() + timeout_s
        while not condition():
            assert time.time() < deadline, f"{what} not seen in {timeout_s} s:\n{self.logs(sid)[-3000:]}"
            time.sleep(2)


@pytest.mark.slow
def test_submitted_jobs_refuse_relative_paths_say_where_they_resume_and_leave_nothing(cluster, tmp_path):
    jobs = Jobs(cluster, tmp_path)
    generate(SynthConfig(out=str(tmp_path / "synth"), train_per_class=3, val_per_class=1, ood_val_per_class=1, ood_test_per_class=1,
                         target_train_per_class=0, target_test_per_class=0, frame_size_px=32, num_frames=8))
    manifest = f"input.manifest={tmp_path / 'synth' / 'source' / 'manifest.csv'}"

    # 1. A relative output path fails before any work, naming the key (it would land in Ray's copy of the code).
    jobs.submit("relative", "ray_jobs.preprocess", "--out", "out/shards", manifest, *TINY_DATA)
    assert jobs.wait("relative", 120) == "FAILED"
    assert "config error: relative path in a submitted Ray job: out=out/shards." in jobs.logs("relative")

    # 2. The same with an absolute path: curated.
    shards = tmp_path / "shards"
    jobs.submit("curate", "ray_jobs.preprocess", "--out", str(shards), manifest, *TINY_DATA)
    assert jobs.wait("curate") == "SUCCEEDED", jobs.logs("curate")[-3000:]
    assert (shards / "_committed.json").is_file()

    # 3. Training on 2 DDP workers, stopped with `ray job stop` once it has a checkpoint ...
    run = tmp_path / "runs" / "sdn"
    train = ("ray_jobs.pretrain", f"shards={shards}", f"out={tmp_path / 'runs'}", "name=sdn", "optim.epochs=40", *TINY_RUN)
    jobs.submit("train", *train)
    snapshot = run / "checkpoint_manager_snapshot.json"
    jobs.wait_for(lambda: snapshot.is_file() and "checkpoint_dir_name" in snapshot.read_text(), "a checkpoint", "train")
    assert "pretrain: starting" in jobs.logs("train")
    assert jobs.ray("stop", "train").returncode == 0
    assert jobs.wait("train", 120) == "STOPPED"
    # The entrypoint and its Train workers, on both nodes. (Ray Data's cluster-wide actors, _StatsActor and
    # kin, are detached by design: the first job that used Ray Data, the curation, started them.)
    assert left_behind(jobs.marker("train"), 60) == {}

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
    assert left_behind(jobs.marker("train-again"), 60) == {}
