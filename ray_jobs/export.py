"""Export: a run's backbone as torchvision-loadable weights (state dict and safetensors) and a model card.

    python -m ray_jobs.export --run RUN --out DIR [--checkpoint best]

DIR/backbone.pth and backbone.safetensors load into torchvision.models.video.r3d_18() (mc3_18,
r2plus1d_18) with strict=False leaving only fc.* missing; fc.safetensors is the action head as that fc;
model_card.json / model_card.md describe classes, preprocessing, training config, loss weights, metrics,
per-class accuracy per eval split and the shards' digest; confusion_SPLIT.png per eval split.
"""

from __future__ import annotations

import sys
import logging

from debias.evaluation.export import ExportConfig, export_run
from debias.config import ConfigError
from ray_jobs.common import job_parser, load_job_config, options_to_overrides

log = logging.getLogger("ray_jobs.export")  # not __name__: under `python -m` that is __main__


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("debias export", __doc__, out_option=True)
    parser.add_argument("--run", help="the training run folder (same as run=...)")
    parser.add_argument("--checkpoint", help="latest (default), best, or a checkpoint folder")
    args = parser.parse_intermixed_args(argv)
    options_to_overrides(args, ("run", "checkpoint"))
    cfg = load_job_config(ExportConfig, args)
    try:  # a wrong run folder or checkpoint is the user's to fix: its message, no traceback
        card = export_run(cfg)
    except (FileNotFoundError, ConfigError) as e:
        sys.exit(f"debias export: {e}")
    log.info("export: %s (epoch %s) -> %s; %s", card["backbone"], card["epoch"], cfg.out,
             card["torchvision_constructor"] or "no torchvision twin (r3d_narrow)")


if __name__ == "__main__":
    main()
