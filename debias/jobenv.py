"""Inside a submitted Ray job (`ray job submit`), a relative path in a config fails before any work.

Ray starts a submitted job's entrypoint in its own copy of the uploaded working_dir
(`.../runtime_resources/working_dir_files/_ray_pkg_<hash>/`), one per node and deleted when unused: a
relative input path resolves into that copy (where the data is not), and a relative output path writes
there, where nobody finds it and each node writes a different folder. So in a submitted job every path
field of a config (`PathStr`, `debias.config.paths`) must be absolute (on storage every node sees) or a
URI (s3://, gs://, file://...). Run directly (`python -m ray_jobs.X`, `debias X`), relative paths keep
resolving against the current directory.

A config may list the path fields its job sets itself (e.g. the demo sets `pretrain.out` from `out`) in a
class attribute `job_set_paths`: dotted-key patterns (fnmatch), relative to that config.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections.abc import Iterator
from typing import Any

from debias.config import ConfigError, paths

# Ray's job supervisor sets this on the entrypoint of every submitted job (the job's runtime_env and
# metadata, ray/dashboard/modules/job/job_supervisor.py `_get_driver_env_vars`); nothing else does.
SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_submitted_job() -> bool:
    """True in the entrypoint of a `ray job submit` (and the processes it starts)."""
    return SUBMITTED_JOB_ENV in os.environ


def _set_by_job(cfg: Any, prefix: str = "") -> Iterator[str]:
    """The patterns of the path fields the job derives itself, nested sections' own included."""
    for pattern in getattr(cfg, "job_set_paths", ()):
        yield prefix + pattern
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _set_by_job(value, f"{prefix}{f.name}.")


def relative_paths(cfg: Any) -> list[tuple[str, str]]:
    """(dotted key, value) of each path the user gave that is neither absolute (`~` counts: it names the
    same folder from any working directory) nor a URI; empty values mean "unset" and are skipped."""
    derived = list(_set_by_job(cfg))
    return [(key, value) for key, value in paths(cfg)
            if value and "://" not in value and not os.path.isabs(os.path.expanduser(value))
            and not any(fnmatch.fnmatchcase(key, pattern) for pattern in derived)]


def check_job_paths(cfg: Any, used: tuple[str, ...] = ("*",)) -> None:
    """In a submitted job, raise ConfigError naming every relative path key the job uses (`used`: patterns
    of dotted keys; a job that reads one section of a shared config names it); elsewhere do nothing."""
    if not in_submitted_job():
        return
    bad = [(key, value) for key, value in relative_paths(cfg) if any(fnmatch.fnmatchcase(key, p) for p in used)]
    if bad:
        shown = ", ".join(f"{key}={value}" for key, value in bad)
        raise ConfigError(
            f"relative path in a submitted Ray job: {shown}. It would resolve inside Ray's per-node copy of "
            "the job's working_dir, which is discarded; give an absolute path on storage every node sees "
            "(e.g. /mnt/shared/...) or a URI (s3://bucket/..., gs://...)")
