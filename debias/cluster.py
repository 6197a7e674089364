"""Joining or starting Ray, and the logging every job and worker shares.

The drivers (`ray_jobs/`) and the library's own job functions (`debias.training.pretrain.run_pretrain`, ...) call
`init_ray()`: under `ray job submit` (RAY_ADDRESS set) it joins that cluster, otherwise it starts a
private local instance for the job.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import ray

LOG_LEVEL_ENV = "DEBIAS_LOG_LEVEL"  # how the level reaches Ray's worker processes
LOCAL_RAY_ENV = "DEBIAS_LOCAL_RAY"  # marks every process of a job's private Ray instance (they inherit it)
# Ray Data's seconds between progress reports when stdout is no terminal (its own default: 10), read when
# ray.data is imported; a job's log gets the total progress this often, not its whole operator table.
PROGRESS_LOG_ENV = "RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL"
PROGRESS_LOG_INTERVAL_S = 60

K = TypeVar("K")


def configure_logging(level: str | None = None) -> None:
    """`debias.*` and `ray_jobs.*` loggers to stderr at `level` (default: $DEBIAS_LOG_LEVEL or INFO).

    The level is also put into the environment, which the workers of a local Ray inherit and a
    cluster's workers get through `init_ray`'s runtime_env, so that a worker's lines match the driver's."""
    level = (level or os.environ.get(LOG_LEVEL_ENV) or "INFO").upper()
    os.environ[LOG_LEVEL_ENV] = level
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    for name in ("debias", "ray_jobs"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def init_ray(local_num_cpus: int = 0) -> None:
    """Join the cluster when there is one (`ray job submit` sets RAY_ADDRESS), else start locally.

    Locally, Ray gets at least 4 logical CPUs: a Train worker, the Data tasks feeding it and (under
    Tune) the trial itself each reserve a CPU, and with only the 2 physical cores of a small machine
    that reservation deadlocks (see docs/ray-notes.md). The cores are shared, not oversubscribed in work.
    """
    quiet_progress()
    if ray.is_initialized():
        return
    env = {LOG_LEVEL_ENV: os.environ.get(LOG_LEVEL_ENV, "INFO"), PROGRESS_LOG_ENV: os.environ[PROGRESS_LOG_ENV]}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True, runtime_env={"env_vars": env})
        return
    # A Train worker must start within this (Ray's default: 60 s) or the group is torn down and
    # retried; on a busy small machine importing torch in a fresh worker can take longer than that,
    # and then no attempt ever succeeds. Local workers inherit this process's environment.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    # Ray Train starts a preemption watcher (an actor process) per run, for nodes a cloud can take
    # back: a local Ray has none, and the demo starts 12 runs on 2 cores.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # The dashboard shows progress, and Ray Train needs its State API: its placement-group cleaner frees
    # the workers of a run killed mid-fit (a trial that ASHA stops). Left to itself, that cleaner finds
    # the API by auto-detecting "the" local Ray and dies when the machine runs another Ray instance, so
    # every process of this Ray is told where its dashboard is.
    port = free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    os.environ[LOCAL_RAY_ENV] = token = uuid.uuid4().hex
    # Registered before ray.init, so that it runs after Ray's own atexit shutdown (atexit is LIFO).
    atexit.register(reap, token)
    # A job stopped with SIGTERM (kill, a scheduler, `timeout`) dies without atexit by default, and its
    # private Ray, every process of it, lives on. Exiting runs both hooks.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # address="local": a private instance even when another Ray runs on this machine (`ray start`, another
    # job), which `ray.init()` would otherwise join.
    ray.init(address="local", num_cpus=local_num_cpus or max(4, os.cpu_count() or 1), include_dashboard=True,
             dashboard_host="127.0.0.1", dashboard_port=port, log_to_driver=True)


def quiet_progress() -> None:
    """Ray Data's progress in a log that is no terminal (a submitted job's, a redirected run's): the total
    progress in 3 lines every PROGRESS_LOG_INTERVAL_S, not its whole operator table every 10 s (most of a
    long job's log was that table). On a terminal its live bars are left as they are."""
    os.environ.setdefault(PROGRESS_LOG_ENV, str(PROGRESS_LOG_INTERVAL_S))  # processes started from here
    if sys.stdout.isatty():
        return
    from ray.data._internal.progress.logging_progress import LoggingExecutionProgressManager

    # The class read the variable when this process imported ray.data (before it was set here).
    LoggingExecutionProgressManager.LOG_REPORT_INTERVAL_SEC = int(os.environ[PROGRESS_LOG_ENV])
    ray.data.DataContext.get_current().enable_operator_progress_bars = False


def reap(token: str, grace_s: float = 10.0) -> list[int]:
    """After the job's private Ray has shut down: end every process still marked as one of its own
    (LOCAL_RAY_ENV=token in its environment), SIGTERM first, SIGKILL after `grace_s`. Ray's shutdown
    ends its workers by itself; this catches one that outlives its raylet (an orphaned TrainController
    holding its memory was seen after a pipeline job). Returns the pids it had to end."""
    if ray.is_initialized():
        ray.shutdown()

    def marked() -> list[int]:
        needle, me, found = f"{LOCAL_RAY_ENV}={token}".encode(), os.getpid(), []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if int(environ.parent.name) != me and needle in environ.read_bytes().split(b"\0"):
                    found.append(int(environ.parent.name))
            except (OSError, ValueError):
                continue
        return found

    deadline = time.time() + grace_s
    while (left := marked()) and time.time() < deadline:  # Ray's own shutdown is still ending them
        time.sleep(0.5)
    if left:  # at interpreter exit the logging streams may be closed already (pytest's capture): the real stderr
        print(f"debias.cluster: {len(left)} processes of this job's Ray outlived its shutdown; ending them: {left}",
              file=sys.__stderr__, flush=True)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1.0)
        left = marked()
    return left


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bounded(launch: dict[K, Callable[[], ray.ObjectRef]], parallel: int) -> Iterator[tuple[K, Any]]:
    """Start the tasks of `launch` (key -> a call that submits one Ray task) in its order, at most
    `parallel` in flight, and yield (key, result) as each finishes. The bound keeps CPUs free for the
    Train workers and Data tasks that the tasks themselves start."""
    pending, running = list(launch), {}
    while pending or running:
        while pending and len(running) < max(1, parallel):
            key = pending.pop(0)
            running[launch[key]()] = key
        done, _ = ray.wait(list(running), num_returns=1)
        yield running.pop(done[0]), ray.get(done[0])
