from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Ray Train's controller polls its workers every 2 s, so a tiny test run idles up to two polls after its
# last epoch (measured: 4.4 s of a 18 s run). Ray processes started from this one inherit the setting; a
# missed poll is only an error after 10 min, so the faster cadence changes no outcome.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--all", action="store_true",
                     help="the whole suite, as CI runs it: also the tests marked slow (without: the fast tier)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fast tier by default: tests marked slow run with --all (or when -m picks them)."""
    if config.getoption("--all") or config.option.markexpr:
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


REAL_CLIPS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_clips"

# configs/pipeline/quick.yaml shrunk to seconds per stage: the pipeline tests (local disk and S3) run it.
PIPELINE_TINY = [
    "synth.train_per_class=4", "synth.val_per_class=2", "synth.ood_val_per_class=2", "synth.ood_test_per_class=2", "synth.target_train_per_class=3",
    "synth.target_test_per_class=2", "synth.frame_size_px=32", "synth.num_frames=8",
    "source.decode.num_frames=8", "targets.target.preprocess.decode.num_frames=8",
    # one trial, one seed (the choice among several pairs: tests/test_sweep.py; the pairing of seeds: test_transfer.py)
    "sweep.lambda_scene.values=[0.5]", "sweep.lambda_mask.values=[1.0]", "sweep.seeds=[0]", "sweep.asha.grace_period=1",
    "sweep.pretrain.clip.clip_len=8", "sweep.pretrain.optim.epochs=2", "sweep.pretrain.optim.batch_size=8",
    "sweep.pretrain.model.width=4", "transfer.finetune.clip.clip_len=8", "transfer.finetune.optim.epochs=2",
    "transfer.finetune.optim.batch_size=8", "transfer.bias.clip_len=8", "transfer.bias.probe_steps=50",
    # the fine-tuning runs in Ray Train's local mode (the demo's): no worker group to start for a tiny model
    "transfer.finetune.scaling.num_workers=0", "transfer.finetune.scaling.max_failures=0",
    # the sweep's best against scratch, no reference pretraining: a Train run like the sweep's trial (the
    # references' wiring, per seed: test_transfer.py's fake-stage pipeline)
    "references={}", "scratch=true"]


def job_processes(marker: str) -> dict[int, str]:
    """pid -> command line of every live process whose environment holds JOB_MARKER=marker: a job started
    with that variable and everything it started (Ray's GCS, raylet, workers, actors) inherit it, also
    once orphaned."""
    needle = f"{JOB_MARKER}={marker}".encode()
    found = {}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle not in environ.read_bytes().split(b"\0"):
                continue
            stat = (environ.parent / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":  # a zombie has exited already
                continue
            found[int(environ.parent.name)] = (environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
        except OSError:
            continue
    return found


JOB_MARKER = "DEBIAS_TEST_JOB"


def left_behind(marker: str, timeout_s: float = 20, ignore: frozenset[str] = frozenset()) -> dict[int, str]:
    """The processes of the job marked `marker` still alive `timeout_s` after it ended (Ray's own shutdown
    takes seconds), but those whose process title (first word of the command line) is in `ignore`."""
    import time

    def alive() -> dict[int, str]:
        return {pid: cmd for pid, cmd in job_processes(marker).items() if cmd.split()[0] not in ignore}

    deadline = time.time() + timeout_s
    while (left := alive()) and time.time() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture(scope="session")
def real_clips() -> Path:
    if not (REAL_CLIPS / "MANIFEST.tsv").is_file():
        pytest.skip(f"real clips not found at {REAL_CLIPS} (the shared/ folder beside the repo)")
    return REAL_CLIPS


@pytest.fixture(scope="module")
def cluster():
    """A head that runs no work (CPU 0, like cluster.yaml's) and two 2-CPU worker nodes (the processes
    `ray start --head` and `ray start --address` start), its dashboard (and job API) on a free port;
    this process is connected to it as a driver. One per test module."""
    import ray
    from ray.cluster_utils import Cluster

    from debias.cluster import free_port

    # Free ports for the dashboard and each node's agent (which starts submitted jobs): their defaults
    # (8265, 52365) may belong to another Ray on this machine, and the nodes here share one address.
    own_ray()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True, "dashboard_port": free_port(),
                                                      "dashboard_agent_listen_port": free_port()})
    for _ in range(2):
        c.add_node(num_cpus=2, dashboard_agent_listen_port=free_port())
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def ray_local():
    """A small local Ray instance in this process, started by the first module that asks and kept for the
    next (a start and a shutdown cost seconds on 2 cores). A module whose work still holds CPUs at its
    end hands the next a fresh one; fixtures that need a Ray of their own (`cluster`, test_sweep's)
    shut this one down first (`own_ray`)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=512 * 1024**2,
                 log_to_driver=False)
    yield ray
    if ray.is_initialized() and ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        ray.shutdown()


def own_ray() -> None:
    """Before a fixture starts a Ray of its own in this process: the shared one (`ray_local`) goes."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _shared_ray_shutdown():
    yield
    own_ray()


def epoch_lines(run: Path) -> dict[int, str]:
    """metrics.jsonl as written: epoch -> its line. A line carries the epoch's timings, so an epoch trained
    again after a restart (the writer keeps one line per epoch) has another line."""
    return {json.loads(x)["epoch"]: x for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()}


def docs_render():
    """docs/render.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render", Path(__file__).resolve().parents[1] / "docs" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
