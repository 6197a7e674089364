"""Synth: write the synthetic scene-bias benchmark (real H.264 videos, manifests, ground truth).

    python -m ray_jobs.synth [OUT] [--config FILE] [key=value ...]

No Ray needed: rendering is fast and single-process; it is a job so that every step of the demo
can also be run (and submitted) by itself.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile

from tqdm import tqdm

from debias import storage
from debias.synth import SynthConfig, generate
from ray_jobs.common import job_parser, load_job_config

log = logging.getLogger("ray_jobs.synth")  # not __name__: under `python -m` that is __main__


def run_synth(cfg: SynthConfig) -> dict:
    """Render the benchmark into `cfg.out`; for a URI, into a local temporary folder that is then uploaded
    whole (the encoder writes local files)."""
    with tqdm(desc="synth videos", unit="video", disable=None) as bar, tempfile.TemporaryDirectory() as tmp:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
        target = storage.absolute(cfg.out)
        summary = generate(dataclasses.replace(cfg, out=tmp) if storage.is_uri(target) else cfg, progress)
        if storage.is_uri(target):
            storage.upload(tmp, target)
    log.info("synth: %s -> %s", json.dumps(summary["videos"]), target)
    return summary


def main(argv: list[str] | None = None) -> None:
    args = job_parser("debias synth", __doc__, positional=("OUT", "out")).parse_args(argv)
    run_synth(load_job_config(SynthConfig, args))


if __name__ == "__main__":
    main()
