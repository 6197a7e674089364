"""Embed: pooled backbone features and action logits of every shard row or video, with Ray Data.

    python -m ray_jobs.embed --run RUN --input SHARDS_OR_VIDEO_FOLDER --out OUT [key=value ...]

INPUT is a preprocess output (its shards/ rows are embedded as stored) or a folder of videos (decoded
first with the run's own settings). One actor per `actors` loads the model once (a GPU each where the
cluster has GPUs); OUT/embeddings/*.parquet holds video_id, clip_index, label, split, embedding
(list<float32>, the backbone's width) and logits, one row per input row; OUT/errors.parquet the
videos that failed; OUT/summary.json the counts.
"""

from __future__ import annotations

import sys
from debias.evaluation.embed import EmbedConfig, run_embed
from debias.config import ConfigError
from ray_jobs.common import job_parser, load_job_config, options_to_overrides


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("debias embed", __doc__, out_option=True)
    parser.add_argument("--run", help="the training run folder (same as run=...)")
    parser.add_argument("--input", help="shards (a preprocess output) or a folder of videos (same as input=...)")
    args = parser.parse_intermixed_args(argv)
    options_to_overrides(args, ("run", "input"))
    cfg = load_job_config(EmbedConfig, args)
    try:  # a wrong run folder, checkpoint or input is the user's to fix: its message, no traceback
        run_embed(cfg)
    except (FileNotFoundError, ConfigError) as e:
        sys.exit(f"debias embed: {e}")


if __name__ == "__main__":
    main()
