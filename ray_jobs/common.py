"""What every driver shares: argument parsing, logging and config loading (Ray itself: `debias.cluster`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TypeVar

from debias import faults, storage
from debias.cluster import configure_logging
from debias.config import ConfigError, dump_yaml, load_config, paths
from debias.jobenv import check_job_paths

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
               "--print-config shows every key with its value. A mapping given whole replaces the "
               "file's (pretrained={baseline: /runs/b} keeps no other entry); a dotted key sets one entry "
               "and keeps the others (pretrained.baseline=/runs/b). Under `ray job submit` every path "
               "must be absolute (on storage all nodes see) or a URI: a relative one is refused before "
               "any work.")
    parser.add_argument("--config", help="YAML config file (omitted: the built-in defaults)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                        help="how much the job logs (default INFO, or $DEBIAS_LOG_LEVEL)")
    if out_option:
        parser.add_argument("--out", help="output folder (same as out=...)")
    if positional:
        parser.add_argument("positional", nargs="?", metavar=positional[0], help=f"sets {positional[1]}")
    parser.set_defaults(positional_key=positional[1] if positional else None, job=prog.split()[-1])
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def options_to_overrides(args: argparse.Namespace, keys: tuple[str, ...]) -> None:
    """Put the job's own `--KEY VALUE` options in front of its overrides as KEY=VALUE (JSON-quoted, so a
    path stays a string whatever it looks like)."""
    args.overrides = [f"{k}={json.dumps(getattr(args, k))}" for k in keys if getattr(args, k)] + args.overrides


def load_job_config(cls: type[T], args: argparse.Namespace, paths_used: tuple[str, ...] = ("*",)) -> T:
    """Load and validate the config; a bad key or value, or a relative path in a submitted job, exits with
    its message before any work (`paths_used`: the path keys the job reads, patterns). Also sets up logging at --log-level, and a storage fault that ends the
    job as one line (`debias.faults`)."""
    configure_logging(getattr(args, "log_level", None))
    overrides = list(args.overrides)
    if getattr(args, "out", None):
        overrides.insert(0, f"out={args.out}")
    first = getattr(args, "positional", None)
    if first is not None:  # `key=value` lands here too when no positional was given
        overrides.insert(0, first if "=" in first else f"{args.positional_key}={first}")
    try:
        cfg = load_config(cls, args.config, overrides)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            sys.exit(0)
        check_job_paths(cfg, paths_used)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    job = getattr(args, "job", "debias")
    faults.install(job, [(key, storage.absolute(value)) for key, value in paths(cfg) if key in ("out", "storage") and value])
    return cfg
