"""Synth: write the synthetic scene-bias benchmark (real H.264 videos, manifests, ground truth).

    python -m ray_jobs.synth [OUT] [--config FILE] [key=value ...]

No Ray needed: rendering is fast and single-process; it is a job so that every step of the demo
can also be run (and submitted) by itself.
"""

from __future__ import annotations

import json

from tqdm import tqdm

from debias.synth import SynthConfig, generate
from ray_jobs.common import job_parser, load_job_config


def run_synth(cfg: SynthConfig) -> dict:
    with tqdm(desc="synth videos", unit="video") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
        summary = generate(cfg, progress)
    print(f"synth: {json.dumps(summary['videos'])} -> {cfg.out}")
    return summary


def main(argv: list[str] | None = None) -> None:
    args = job_parser("debias synth", __doc__, positional=("OUT", "out")).parse_args(argv)
    run_synth(load_job_config(SynthConfig, args))


if __name__ == "__main__":
    main()
