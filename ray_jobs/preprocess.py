"""Preprocess: manifest -> decode -> sample -> resize/crop -> JPEG -> human masks -> scene labels -> Parquet.

    python -m ray_jobs.preprocess --config configs/preprocess/synth.yaml [key=value ...]
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import ray
from ray.data import ActorPoolStrategy, TaskPoolStrategy

from debias.config import to_dict
from debias.curate import (AnnotationMasks, AnnotationScenes, NoMasks, NoScenes, PreprocessConfig,
                           make_decode_fn, make_finalize_fn, read_manifest, summarize_run)
from ray_jobs.common import init_ray, job_parser, load_job_config


def run_preprocess(cfg: PreprocessConfig) -> dict:
    out = Path(cfg.out).resolve()
    t0 = time.perf_counter()
    rows, classes = read_manifest(cfg.input)  # a missing manifest fails here, before any decoding
    annotations = str(cfg.annotations_dir())
    labels = cfg.labels
    masks_step = (AnnotationMasks, (annotations, cfg.decode)) if labels.mask_provider == "annotations" else (NoMasks, ())
    scenes_step = (AnnotationScenes, (annotations,)) if labels.scene_provider == "annotations" else (NoScenes, ())
    scenes_step[0](*scenes_step[1])  # a provider that cannot load fails here, before any video is decoded
    random.Random(cfg.seed).shuffle(rows)  # shards come out class-mixed, which a streaming reader needs
    for stale in (out / "shards", out / "_errors"):
        shutil.rmtree(stale, ignore_errors=True)  # a rerun replaces, never appends
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.json").write_text(json.dumps(classes, indent=1))
    res = cfg.resources

    init_ray()
    ds = ray.data.from_items(rows)
    # 1. decode + sample + resize/crop + JPEG, 1:1 (a failure is an error row, not a lost row).
    #    CPU-bound, one core per task (PyAV decodes a stream on ~one core); capped when asked, so a
    #    shared cluster keeps cores for training.
    ds = ds.map(make_decode_fn(cfg.decode), num_cpus=res.decode_cpus,
                compute=TaskPoolStrategy(size=res.decode_tasks) if res.decode_tasks else None)
    # 2. human masks, 1:1. A provider is an actor so a model loads once per worker; reading
    #    annotations is light, hence half a CPU each so that it never starves the decoders.
    ds = ds.map_batches(masks_step[0], fn_constructor_args=masks_step[1], batch_format="pandas",
                        batch_size=res.label_batch_size, num_cpus=0.5, compute=ActorPoolStrategy(size=res.label_actors))
    # 3. scene labels, 1:1, same resources and reasons as the masks.
    ds = ds.map_batches(scenes_step[0], fn_constructor_args=scenes_step[1], batch_format="pandas",
                        batch_size=res.label_batch_size, num_cpus=0.5, compute=ActorPoolStrategy(size=res.label_actors))
    # 4. finalize, 1:(0 or 1): error rows go to the error table, good rows are cast to the shard schema.
    #    Arrow-only work: a quarter CPU.
    ds = ds.map_batches(make_finalize_fn(str(out / "_errors")), batch_format="pyarrow", num_cpus=0.25)
    # 5. write size-targeted Parquet shards.
    ds.write_parquet(str(out / "shards"), min_rows_per_file=res.rows_per_shard,
                     max_rows_per_file=res.rows_per_shard)
    summary = summarize_run(out, rows, {"total": time.perf_counter() - t0}, to_dict(cfg))
    accounted = summary["videos_ok"] + summary["videos_failed"]
    if accounted != summary["videos_in"]:
        raise RuntimeError(f"{summary['videos_in'] - accounted} videos unaccounted for in {out}")
    print(f"preprocess: {summary['videos_ok']} videos -> {out / 'shards'}, {summary['videos_failed']} failed "
          f"{summary['failures_by_reason'] or ''} (errors: {out / 'errors.parquet'}), "
          f"{summary['timings_s']['total']:.1f} s")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("debias preprocess", __doc__)
    args = parser.parse_args(argv)
    run_preprocess(load_job_config(PreprocessConfig, args))


if __name__ == "__main__":
    main()
