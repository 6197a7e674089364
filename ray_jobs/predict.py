"""Predict: the top-K actions of each video with a trained run's own preprocessing.

    python -m ray_jobs.predict VIDEO... --run RUN [--top-k K] [--json] [--checkpoint best] [--device cpu]

Each video is decoded with the run's stored frame sampling and sizes and cut into its evaluation clips
as training evaluated; the printed probabilities are video-level (the softmax averaged over the clips).
--json prints one JSON object for scripts. A video that cannot be decoded is reported (naming the file)
and the others still run; the exit status is 1 when any failed.
"""

from __future__ import annotations

import json
import sys

from debias.evaluation.inference import PredictConfig, predict
from debias.config import ConfigError
from ray_jobs.common import job_parser, load_job_config


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("debias predict", __doc__)
    parser.add_argument("--run", help="the training run folder (same as run=...)")
    parser.add_argument("--checkpoint", help="latest (default), best, or a checkpoint folder")
    parser.add_argument("--top-k", type=int, help="classes to show per video (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--device", help="auto (default), cpu, cuda, ...")
    args = parser.parse_intermixed_args(argv)
    # The positionals are videos and key=value overrides; a video path never holds '='.
    videos = [a for a in args.overrides if "=" not in a]
    args.overrides = [a for a in args.overrides if "=" in a] + [f"videos={json.dumps(videos)}"]
    for key, value in (("run", args.run), ("checkpoint", args.checkpoint), ("top_k", args.top_k),
                       ("device", args.device), ("format", "json" if args.json else None)):
        if value is not None:
            args.overrides.insert(0, f"{key}={json.dumps(value)}")
    cfg = load_job_config(PredictConfig, args)
    try:  # a wrong run folder or checkpoint is the user's to fix: its message, no traceback
        result = predict(cfg)
    except (FileNotFoundError, ConfigError) as e:
        sys.exit(f"debias predict: {e}")
    failed = [v for v in result["videos"] if v["error"]]
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for v in result["videos"]:
            if not v["error"]:
                print(f"{v['video']}: " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in v["top"]))
        for v in failed:
            print(f"{v['video']}: FAILED: {v['error']}", file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
