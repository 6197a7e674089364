"""`debias`: the command a person runs. Each subcommand is a Ray job module (`python -m ray_jobs.X`),
so what runs here runs unchanged under `ray job submit -- python -m ray_jobs.X ...`."""

from __future__ import annotations

import importlib
import sys

JOBS = {
    "demo": "the whole chain on a fresh synthetic benchmark: baseline vs SDN, with the ablation",
    "synth": "write the synthetic scene-bias benchmark (H.264 videos, manifest, ground truth)",
    "preprocess": "curate videos into Parquet frame shards with Ray Data (decode, masks, scene labels)",
    "pretrain": "train the debiased model with Ray Train (lambda_scene=0 lambda_mask=0 is the baseline)",
    "weights": "list, download and verify the model weights a config needs (SAM, detector, Places365)",
    "sweep": "sweep the loss weights with Ray Tune (ASHA), each trial a Ray Train run",
    "transfer": "fine-tune pretrained backbones on target tasks and measure their scene bias",
    "pipeline": "the whole chain: preprocess -> sweep -> transfer -> report, skipping finished stages",
    "predict": "top-K actions of video files with a trained run (its own preprocessing; --json for scripts)",
    "embed": "backbone features and logits of shards or a video folder with Ray Data batch inference (Parquet)",
    "export": "a run's backbone as torchvision-loadable weights (.pth, safetensors) with a model card",
    "bias": "scene bias of a model in the field's terms: SCUBA, SCUFO, contrasted, HAT's background/human-only, swap",
}

USAGE = "usage: debias JOB [--config FILE] [key=value ...]   (debias JOB --help for a job's options)\n\njobs:\n" + \
    "\n".join(f"  {name:<11} {text}" for name, text in JOBS.items())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        sys.exit(f"debias: unknown job '{job}'\n\n{USAGE}")
    importlib.import_module(f"ray_jobs.{job}").main(rest)


if __name__ == "__main__":
    main()
