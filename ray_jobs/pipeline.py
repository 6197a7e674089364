"""Pipeline: the whole chain in one command, each stage skipped when its outputs match its config.

    python -m ray_jobs.pipeline --config configs/pipeline/quick.yaml [--out DIR] [key=value ...]

[synth] -> preprocess (source and every target) -> reference pretraining (the baseline) -> sweep of the
loss weights (Ray Tune) -> transfer of every pretrained backbone (baseline, the sweep's best, from
scratch) + scene-bias measurements -> report: DIR/summary.json, DIR/report.md and plots. Every
pretraining and fine-tuning runs once per seed of sweep.seeds, and the transfer comparisons are paired
over them (the seed-S backbones fine-tuned with seed S), with 95 % intervals.

Each stage writes DIR/STAGE/stage.json with a hash of its config and of the stages it reads. On a rerun
a finished stage with the same hash is skipped, an interrupted one resumes (the sweep through
Tuner.restore, training runs from their checkpoints), and one whose hash changed is run afresh.
"""

from __future__ import annotations

from debias.experiments.pipeline import PipelineConfig, run_pipeline
from ray_jobs.common import job_parser, load_job_config


def main(argv: list[str] | None = None) -> None:
    args = job_parser("debias pipeline", __doc__, out_option=True).parse_args(argv)
    run_pipeline(load_job_config(PipelineConfig, args))


if __name__ == "__main__":
    main()
