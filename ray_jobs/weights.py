"""Weights: list, download and verify the checkpoints a preprocess config needs.

    debias weights --config configs/preprocess/minikinetics200.yaml              # list, with status
    debias weights --config configs/preprocess/minikinetics200.yaml --download   # fetch what is missing, verify

Lists every checkpoint the config's label providers use (detector + SAM for mask_provider auto/sam,
Places365 + its category names for scene_provider auto/places365) with its official URL, size and
the path where it is expected (labels.weights_dir; the detector is also found in torch.hub's
cache, where torchvision puts it). --download fetches missing or broken files
(resuming an interrupted download) from the official URL, or from labels.weights_url_base when set
(a mirror), then checks that each file loads. Exits non-zero while any file is missing or broken.
No Ray cluster is needed.
"""

from __future__ import annotations

import sys

from debias.curation.curate import PreprocessConfig
from debias.curation.labels.weights import run_weights
from ray_jobs.common import job_parser, load_job_config

def main(argv: list[str] | None = None) -> None:
    parser = job_parser("debias weights", __doc__)
    parser.add_argument("--download", action="store_true", help="fetch missing or broken files, then verify them")
    args = parser.parse_args(argv)
    status = run_weights(load_job_config(PreprocessConfig, args), args.download, args.config)
    if any(status.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
