"""Transfer: fine-tune pretrained backbones on target tasks (Ray Train runs in parallel) and measure
each pretrained model's scene bias.

    python -m ray_jobs.transfer --config configs/transfer/synth.yaml [key=value ...]

For every pretrained model (`pretrained: {name: checkpoint dir}`), target and split: a new head, all
layers fine-tuned, video-level top-1 on the split's test videos. For every pretrained model: the scene
probe, the representation bias and the counterfactual test on the pretraining data (debias/evaluation/bias.py).
Writes OUT/summary.json, OUT/report.md, OUT/transfer.png (the table as bars) and OUT/curves.png.
"""

from __future__ import annotations

from debias.experiments.transfer import TransferConfig, run_transfer
from ray_jobs.common import job_parser, load_job_config


def main(argv: list[str] | None = None) -> None:
    args = job_parser("debias transfer", __doc__).parse_args(argv)
    run_transfer(load_job_config(TransferConfig, args))


if __name__ == "__main__":
    main()
