"""Storage faults (no space, no permission, a quota, a bucket that vanished) end a job in one line.

A full disk under a Ray Data write arrives wrapped (a RayTaskError around the worker's OSError, re-raised
by Ray Data after it logged the whole trace with "please open an issue on the Ray project"), and often
names no path (pyarrow: "Error writing bytes to file. Detail: [errno 28] No space left on device"). The
job's driver installs `install(...)` (ray_jobs.common does, for every job): an uncaught exception whose
cause chain holds a storage fault then prints one line, naming the path (the exception's own, else the
job's output keys), the fault and what to do, and keeps the traceback in a log file the line names.
Any other exception is reported as Python always does. Resuming is untouched: this only reports.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

LOG_DIR_ENV = "DEBIAS_LOG_DIR"  # where fault tracebacks go (default: TMPDIR/debias-logs, off the job's output)

RESUME = "then run the same command again: it resumes where it stopped"
# (what the fault is, what to do), by errno; message texts for the faults that arrive as text only
# (pyarrow's S3 errors, a wrapped worker error whose errno was lost)
FAULTS = {
    errno.ENOSPC: ("no space left on device", f"free space there or choose a larger volume, {RESUME}"),
    errno.EDQUOT: ("disk quota exceeded", f"free space within the quota or raise it, {RESUME}"),
    errno.EACCES: ("permission denied", f"make it writable by the user the job runs as, or choose another path, {RESUME}"),
    errno.EPERM: ("operation not permitted", f"make it writable by the user the job runs as, or choose another path, {RESUME}"),
    errno.EROFS: ("read-only file system", f"choose a writable path, {RESUME}"),
}
TEXTS = (
    (re.compile(r"no space left on device", re.I), errno.ENOSPC),
    (re.compile(r"disk quota exceeded", re.I), errno.EDQUOT),
    (re.compile(r"permission denied", re.I), errno.EACCES),
    (re.compile(r"read-only file system", re.I), errno.EROFS),
)
BUCKET_FAULTS = (
    (re.compile(r"NoSuchBucket|NO_SUCH_BUCKET|bucket does not exist|bucket '[^']*' does not exist", re.I),
     "the bucket does not exist (deleted, or these credentials cannot see it)",
     f"create it or point the job at another bucket, {RESUME}"),
    (re.compile(r"AccessDenied|ACCESS_DENIED|Access Denied|Forbidden", re.I),
     "access denied by the object store", f"grant these credentials access, or choose another bucket, {RESUME}"),
    (re.compile(r"QuotaExceeded|QUOTA_EXCEEDED|quota exceeded|SlowDown|storage quota", re.I),
     "the object store's quota is exhausted", f"free space or raise the quota, {RESUME}"),
)
# Where a message names the path it failed on: Python's OSError text ("[Errno 28] No space left on device:
# '/x'", also inside a worker's traceback that Ray passes on as text), pyarrow's ("... file '/x'") and S3's
_PATHS_IN_TEXT = (re.compile(r"\[Errno \d+\] [^'\n]*?: '([^']+)'"), re.compile(r"file '([^']+)'"),
                  re.compile(r"bucket '([^']+)'"))


@dataclass
class Fault:
    fault: str  # what went wrong, in words
    advice: str  # what to do
    path: str  # where ("" when neither the exception nor its text names it)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything it wraps: __cause__, __context__ and Ray's `cause` (RayTaskError and kin)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]


def storage_fault(exc: BaseException) -> Fault | None:
    """The storage fault at the root of `exc`, or None when it is no storage fault."""
    found = None
    for e in causes(exc):
        if not isinstance(e, BaseException) or not str(e) and not isinstance(e, OSError):
            continue
        text = str(e)
        code = e.errno if isinstance(e, OSError) and e.errno in FAULTS else None
        code = code or next((c for pattern, c in TEXTS if pattern.search(text)), None)
        if code:
            path = (e.filename if isinstance(e, OSError) and e.filename else "") or _path_in(text)
            return Fault(*FAULTS[code], path=str(path))
        for pattern, fault, advice in BUCKET_FAULTS:
            if found is None and pattern.search(text):
                found = Fault(fault, advice, _path_in(text))
    return found


def _path_in(text: str) -> str:
    """The path a message says it failed on ("" when it names none: source files in a traceback do not count)."""
    for pattern in _PATHS_IN_TEXT:
        if match := pattern.search(text):
            return match.group(1)
    return ""


def report(exc: BaseException, job: str, outputs: list[tuple[str, str]]) -> str | None:
    """The one line for a storage fault (None for any other exception), after writing the traceback to a
    log file. `outputs`: (config key, path) the job writes, named when the exception names no path."""
    fault = storage_fault(exc)
    if fault is None:
        return None
    where = fault.path or " / ".join(f"{key}={value}" for key, value in outputs) or "the job's storage"
    log_dir = os.environ.get(LOG_DIR_ENV) or os.path.join(tempfile.gettempdir(), "debias-logs")
    log_file = os.path.join(log_dir, f"{job}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    try:
        os.makedirs(log_dir, exist_ok=True)
        with open(log_file, "w") as f:
            f.write("".join(traceback.format_exception(exc)))
        kept = f"traceback in {log_file}"
    except OSError as e:  # the fault may be this disk's too: the traceback then goes to stderr
        traceback.print_exception(exc, file=sys.stderr)
        kept = f"traceback above (not written to {log_file}: {e.strerror})"
    return f"{job}: storage error: {where}: {fault.fault}; {fault.advice} ({kept})"


class _HideStorageFaults(logging.Filter):
    """Drops Ray Data's console records about a storage fault being raised (its "please open an issue"
    text and the full trace): the one line says it; Ray Data's own log file keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return exc is None or storage_fault(exc) is None


def install(job: str, outputs: list[tuple[str, str]]) -> None:
    """For the rest of this process: an uncaught storage fault ends it with `report`'s line (exit status 1)."""
    previous = sys.excepthook

    def hook(kind, exc, tb):
        line = report(exc, job, outputs) if isinstance(exc, Exception) else None
        if line is None:
            previous(kind, exc, tb)
            return
        # Ray first: its shutdown ends the workers, whose last words (streamed to this log) would
        # otherwise follow the line that should end it
        import ray

        if ray.is_initialized():
            ray.shutdown()
        print(line, file=sys.stderr, flush=True)

    sys.excepthook = hook
    # Ray Data sets up its loggers when imported (the jobs that use it have imported it by now): its
    # console handler, a StreamHandler, gets the filter; its file handler keeps every record.
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not any(
                isinstance(f, _HideStorageFaults) for f in handler.filters):
            handler.addFilter(_HideStorageFaults())
