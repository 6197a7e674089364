"""Preprocess: dataset source -> [yt-dlp download] -> decode + sample + resize/crop + JPEG -> human masks
-> scene labels -> Parquet shards, an error table and a summary.

    python -m ray_jobs.preprocess ROOT --out OUT            # any folder ROOT/<class>/<video>
    python -m ray_jobs.preprocess --config configs/preprocess/kinetics400.yaml [key=value ...]

Sources (input.source): folder, kinetics, minikinetics, ucf101, hmdb51, diving48; sampling policies
(decode.sampling): uniform, paper, seed, clips. OUT is a local path or a URI (s3://, gs://). Every input
video ends in the shards or in the error table with a reason; the run becomes visible at its end, whole,
through OUT/_committed.json (`debias.curation.shards` reads it). A run killed at any point resumes when started
again with the same config and inputs: the videos it wrote are not curated again. Downloads skip files
on disk and known-dead videos (OUT/downloads.parquet).
"""

from __future__ import annotations

from debias.curation.curate import PreprocessConfig
from debias.curation.preprocess import run_preprocess
from ray_jobs.common import job_parser, load_job_config


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("debias preprocess", __doc__, positional=("ROOT", "input.root"), out_option=True)
    args = parser.parse_intermixed_args(argv)  # ROOT, --out and key=value in any order
    run_preprocess(load_job_config(PreprocessConfig, args))


if __name__ == "__main__":
    main()
