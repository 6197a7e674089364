"""What every driver shares: argument parsing, config loading, and joining or starting Ray."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import TypeVar

import ray

from debias.config import ConfigError, dump_yaml, load_config

T = TypeVar("T")


def job_parser(prog: str, description: str, positional: tuple[str, str] | None = None,
               out_option: bool = False) -> argparse.ArgumentParser:
    """The shared command line: `[POSITIONAL] [--config FILE] [--out DIR] [key=value ...]`.

    `positional` = (metavar, config key): an optional leading argument that sets that key, so that
    `debias synth OUT` reads like `debias synth out=OUT`. `out_option` adds `--out DIR` (= `out=DIR`).
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides are dotted config keys, e.g. optim.lr=0.01 loss.lambda_mask=0.5; "
               "--print-config shows every key with its value.")
    parser.add_argument("--config", help="YAML config file (omitted: the built-in defaults)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    if out_option:
        parser.add_argument("--out", help="output folder (same as out=...)")
    if positional:
        parser.add_argument("positional", nargs="?", metavar=positional[0], help=f"sets {positional[1]}")
    parser.set_defaults(positional_key=positional[1] if positional else None)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def load_job_config(cls: type[T], args: argparse.Namespace) -> T:
    """Load and validate the config; a bad key or value exits with its message before any work."""
    overrides = list(args.overrides)
    if getattr(args, "out", None):
        overrides.insert(0, f"out={args.out}")
    first = getattr(args, "positional", None)
    if first is not None:  # `key=value` lands here too when no positional was given
        overrides.insert(0, first if "=" in first else f"{args.positional_key}={first}")
    try:
        cfg = load_config(cls, args.config, overrides)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    if args.print_config:
        print(dump_yaml(cfg), end="")
        sys.exit(0)
    return cfg


def init_ray(local_num_cpus: int = 0) -> None:
    """Join the cluster when there is one (`ray job submit` sets RAY_ADDRESS), else start locally.

    Locally, Ray gets at least 4 logical CPUs: a Train worker, the Data tasks feeding it and (under
    Tune) the trial itself each reserve a CPU, and with only the 2 physical cores of a small machine
    that reservation deadlocks (see docs/ray-2.60.md). The cores are shared, not oversubscribed in work.
    """
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    # A Train worker must start within this (Ray's default: 60 s) or the group is torn down and
    # retried; on a busy small machine importing torch in a fresh worker can take longer than that,
    # and then no attempt ever succeeds. Local workers inherit this process's environment.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    # The dashboard shows progress, and Ray Train needs its State API: its placement-group cleaner frees
    # the workers of a run killed mid-fit (a trial that ASHA stops). Left to itself, that cleaner finds
    # the API by auto-detecting "the" local Ray and dies when the machine runs another Ray instance, so
    # every process of this Ray is told where its dashboard is.
    port = free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(num_cpus=local_num_cpus or max(4, os.cpu_count() or 1), include_dashboard=True,
             dashboard_host="127.0.0.1", dashboard_port=port, log_to_driver=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
