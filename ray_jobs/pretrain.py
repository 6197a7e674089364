"""Pretrain: the SDN trainer on Ray Train, reading the curated shards through Ray Data.

    python -m ray_jobs.pretrain --config configs/pretrain/sdn.yaml [key=value ...]

loss.lambda_scene=0 loss.lambda_mask=0 is the baseline. Running the same OUT/NAME again resumes
from its last checkpoint; scaling.max_failures=N restarts the workers from it when one dies. OUT may
be a local folder or a URI (s3://bucket/runs). configs/repro/ holds the paper's Mini-Kinetics-200
recipes and the seed study's. The run folder OUT/NAME holds config.json (written first), checkpoints,
metrics.jsonl, confusion/ and TensorBoard events (`tensorboard --logdir OUT`).
"""

from __future__ import annotations

from debias.training.pretrain import run_pretrain
from debias.training.train import PretrainConfig
from ray_jobs.common import job_parser, load_job_config


def main(argv: list[str] | None = None) -> None:
    args = job_parser("debias pretrain", __doc__).parse_args(argv)
    run_pretrain(load_job_config(PretrainConfig, args))


if __name__ == "__main__":
    main()
