"""Sweep: Ray Tune over the SDN loss weights, each trial a Ray Train run, with ASHA early stopping.

    python -m ray_jobs.sweep --config configs/sweep/quick.yaml [key=value ...]

Trials report every epoch (so ASHA can stop the weak ones); the best trial is chosen by `metric`.
Running the same STORAGE/NAME again resumes an interrupted sweep (Tuner.restore): finished trials are
kept, unfinished and errored ones continue from their last checkpoint. Writes STORAGE/NAME/summary.json,
sweep.png (each trial's final metric over the two weights) and curves.png (each trial's epochs).
"""

from __future__ import annotations

from debias.experiments.sweep import SweepConfig, run_sweep
from ray_jobs.common import job_parser, load_job_config


def main(argv: list[str] | None = None) -> None:
    args = job_parser("debias sweep", __doc__).parse_args(argv)
    run_sweep(load_job_config(SweepConfig, args))


if __name__ == "__main__":
    main()
