"""Synth: write the synthetic scene-bias benchmark (real H.264 videos, manifests, ground truth).

    python -m ray_jobs.synth [OUT] [--config FILE] [key=value ...]

No Ray needed: rendering is fast and single-process; it is a job so that every step of the demo
can also be run (and submitted) by itself.
"""

from __future__ import annotations

from debias.curation.synth import SynthConfig, run_synth
from ray_jobs.common import job_parser, load_job_config


def main(argv: list[str] | None = None) -> None:
    args = job_parser("debias synth", __doc__, positional=("OUT", "out")).parse_args(argv)
    run_synth(load_job_config(SynthConfig, args))


if __name__ == "__main__":
    main()
