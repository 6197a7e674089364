"""Demo: the whole method, end to end, on a freshly generated synthetic scene-bias benchmark.

    python -m ray_jobs.demo [--out DIR] [--config FILE] [key=value ...]

synth -> preprocess (Ray Data) -> pretrain (Ray Train): baseline, scene loss only, mask loss only and
both (SDN), each once per seed in `seeds`, several runs at once as Ray tasks -> per model: `val` (scenes
as in training) and `ood` (scenes shuffled) accuracy and the scene-bias measures (debias/evaluation/bias.py) ->
DIR/summary.json, DIR/report.md, DIR/bias.png (the measures per variant, mean and every seed) and
DIR/curves.png (the training curves, mean over seeds).
"""

from __future__ import annotations

from debias.experiments.demo import DemoConfig, run_demo
from ray_jobs.common import job_parser, load_job_config


def main(argv: list[str] | None = None) -> None:
    args = job_parser("debias demo", __doc__, out_option=True).parse_args(argv)
    run_demo(load_job_config(DemoConfig, args))


if __name__ == "__main__":
    main()
