"""Bias: scene-bias evaluation of one model in the field's own terms (SCUBA, SCUFO, contrasted accuracy;
HAT's background-only, human-only and action-swap), with the project's own measures beside them.

    python -m ray_jobs.bias --run RUN --shards DATA --out DIR [--checkpoint best] [key=value ...]
    python -m ray_jobs.bias --export EXPORT_DIR --shards DATA --out DIR

The counterfactual clips are built on the fly with Ray Data from the split's frames and person masks
(any `debias preprocess` output). Writes DIR/summary.json, DIR/report.md, DIR/bias_eval.png and
DIR/clips.parquet (one row per clip: predictions, and the reason where a rule dropped it);
examples=N adds PNG strips of N rows' clips under DIR/examples. Definitions: docs/bias-eval.md.
"""

from __future__ import annotations

import sys

from debias.config import ConfigError
from debias.evaluation.field_bias import FieldBiasConfig, run_bias_eval
from ray_jobs.common import job_parser, load_job_config, options_to_overrides


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("debias bias", __doc__, out_option=True)
    parser.add_argument("--run", help="the training run folder (same as run=...)")
    parser.add_argument("--checkpoint", help="latest (default), best, or a checkpoint folder")
    parser.add_argument("--export", help="a `debias export` folder instead of a run (same as export=...)")
    parser.add_argument("--shards", help="curated data with person masks (same as shards=...)")
    args = parser.parse_intermixed_args(argv)
    options_to_overrides(args, ("run", "checkpoint", "export", "shards"))
    cfg = load_job_config(FieldBiasConfig, args)
    try:  # a wrong folder, split or class list is the user's to fix: its message, no traceback
        run_bias_eval(cfg)
    except (FileNotFoundError, ValueError, ConfigError) as e:
        sys.exit(f"debias bias: {e}")


if __name__ == "__main__":
    main()
