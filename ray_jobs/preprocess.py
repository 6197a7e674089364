"""Preprocess: dataset source -> [yt-dlp download] -> decode + sample + resize/crop + JPEG -> human masks
-> scene labels -> Parquet shards, an error table and a summary.

    python -m ray_jobs.preprocess ROOT --out OUT            # any folder ROOT/<class>/<video>
    python -m ray_jobs.preprocess --config configs/preprocess/kinetics400.yaml [key=value ...]

Sources (input.source): folder, kinetics, minikinetics, ucf101, hmdb51, diving48; sampling policies
(decode.sampling): uniform, paper, seed, clips. Every input video ends in OUT/shards/ or in
OUT/errors.parquet with a reason; a rerun replaces the shards atomically and skips downloaded or
known-dead videos (OUT/downloads.parquet).
"""

from __future__ import annotations

import json
import random
import shutil
import time
import uuid
from pathlib import Path

import ray
from ray.data import ActorPoolStrategy, TaskPoolStrategy

from debias.config import to_dict
from debias.curate import Decoder, PreprocessConfig, make_finalize_fn, publish_run
from debias.download import DownloadConfig, make_download_fn, merge_download_status, skip_known_dead
from debias.masks import mask_step
from debias.scenes import scene_names, scene_step
from debias.sources import Row, read_source
from debias.weights import resolve_providers
from ray_jobs.common import init_ray, job_parser, load_job_config


def download_videos(rows: list[Row], cfg: DownloadConfig, videos_dir: Path, out: Path) -> tuple[list[Row], dict]:
    """The download pass, before decoding (the scene-cluster fit and the decoders need the files)."""
    downloads = merge_download_status(out)  # a killed run's status parts count too
    rows = skip_known_dead(rows, downloads, cfg)
    todo = [r for r in rows if not r["error"] and not Path(r["source_path"]).is_file()]
    # Rows that skip the download still carry its time column: one schema for every block.
    done = [{**r, "t_download_s": 0.0} for r in rows if r["error"] or Path(r["source_path"]).is_file()]
    print(f"download: {len(todo)} videos to fetch, {len(done)} on disk or known dead")
    if todo:
        init_ray()
        # 0. download, 1:1, videos_per_task videos a task in turn. Network-bound: a twentieth of a CPU
        #    each, so that download.concurrency alone (not the core count) bounds the load on YouTube.
        ds = ray.data.from_items(todo).map_batches(
            make_download_fn(cfg, str(videos_dir), str(out / "_downloads")), batch_format="pandas",
            batch_size=cfg.videos_per_task, num_cpus=0.05, compute=TaskPoolStrategy(size=cfg.concurrency))
        done += [{k: v.item() if hasattr(v, "item") else v for k, v in r.items()} for r in ds.take_all()]
    return done, merge_download_status(out)


def run_preprocess(cfg: PreprocessConfig) -> dict:
    out = Path(cfg.out).resolve()
    t0 = time.perf_counter()
    rows, classes = read_source(cfg.input)  # a missing manifest or folder fails here, before any work
    timings = {"read_source": time.perf_counter() - t0}
    # auto -> SAM / Places365 where their weights load, else the weight-free providers (announced);
    # a named model with missing or corrupt weights fails here, before any download or decoding.
    mask_provider, scene_provider, weights = resolve_providers(cfg.labels)
    downloads = None
    if cfg.download.enabled:
        t = time.perf_counter()
        rows, downloads = download_videos(rows, cfg.download, cfg.input.videos_dir(), out)
        timings["download"] = time.perf_counter() - t
    t = time.perf_counter()
    masks_step = mask_step(cfg, mask_provider, weights)
    scenes_step = scene_step(cfg, scene_provider, weights, rows)  # clusters: k-means fitted here, on a sample
    scenes_step[0](*scenes_step[1])  # a provider that cannot load fails here, before any video is decoded
    timings["labels_setup"] = time.perf_counter() - t
    random.Random(cfg.seed).shuffle(rows)  # shards come out class-mixed, which a streaming reader needs
    for stale in out.glob(".run-*"):
        shutil.rmtree(stale, ignore_errors=True)  # a killed run's staging; its shards were never published
    run_dir = out / f".run-{uuid.uuid4().hex[:8]}"  # the run writes here; publish_run swaps it in at the end
    (run_dir / "shards").mkdir(parents=True)
    (out / "classes.json").write_text(json.dumps(classes, indent=1))
    # what each scene_id means (Places365 category, cluster number, annotated scene); [] without scenes
    (out / "scenes.json").write_text(json.dumps(scene_names(cfg, scene_provider, weights), indent=1))
    res = cfg.resources

    t = time.perf_counter()
    init_ray()
    timings["ray_start"] = time.perf_counter() - t
    # The model providers take label_gpus GPUs per actor where the cluster has GPUs (they autocast there).
    gpus = res.label_gpus if ray.cluster_resources().get("GPU", 0) > 0 else 0

    def label_pool(model: bool) -> ActorPoolStrategy:
        """A model actor on a GPU runs label_calls_per_actor batches at once, each thread on its own
        CUDA stream, so that one batch's JPEG decode overlaps another's forward pass."""
        calls = res.label_calls_per_actor if model and gpus else 1
        return ActorPoolStrategy(size=res.label_actors, max_concurrent_calls_per_actor=calls,
                                 enable_true_multi_threading=calls > 1)

    # Blocks of <= ~32 videos once there are many (from_items stops at 200 blocks, which would cap the
    # decode tasks of a big cluster at 200); one block a video for a small run.
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), max(200, len(rows) // 32))))
    # 1. decode + sample + resize/crop + JPEG, 1:N (N = decode.clips_per_video under sampling=clips,
    #    else 1; a failure is one error row, not a lost row). CPU-bound, decode_cpus per actor (PyAV
    #    decodes a stream on ~one core with decode.threads=1). An actor pool: Ray Data's task scheduler
    #    kept ~1 decode task busy (Decoder's docstring). decode_workers actors, or one per CPU beside 2
    #    for the label actors and the finalize tasks; a shared cluster sets fewer to keep cores for training.
    decoders = res.decode_workers or max(1, int((ray.cluster_resources().get("CPU", 1) - 2) // res.decode_cpus))
    ds = ds.flat_map(Decoder, fn_constructor_args=(cfg.decode,), num_cpus=res.decode_cpus,
                     compute=ActorPoolStrategy(size=decoders))
    # 2. human masks, 1:1. A provider is an actor so a model loads once per worker; half a CPU each
    #    so that it never starves the decoders; SAM + detector get a GPU where there is one.
    ds = ds.map_batches(masks_step[0], fn_constructor_args=masks_step[1], batch_format="pandas",
                        batch_size=res.label_batch_size, num_cpus=0.5,
                        num_gpus=gpus if mask_provider == "sam" else 0, compute=label_pool(mask_provider == "sam"))
    # 3. scene labels, 1:1, same resources and reasons as the masks (Places365 on the GPU).
    ds = ds.map_batches(scenes_step[0], fn_constructor_args=scenes_step[1], batch_format="pandas",
                        batch_size=res.label_batch_size, num_cpus=0.5,
                        num_gpus=gpus if scene_provider == "places365" else 0, compute=label_pool(scene_provider == "places365"))
    # 4. finalize, 1:(0 or 1): error rows go to the error table, good rows are cast to the shard schema.
    #    Arrow-only work: a quarter CPU.
    ds = ds.map_batches(make_finalize_fn(str(run_dir)), batch_format="pyarrow", num_cpus=0.25)
    # 5. write size-targeted Parquet shards into the run's staging folder (published whole below).
    t = time.perf_counter()
    ds.write_parquet(str(run_dir / "shards"), min_rows_per_file=res.rows_per_shard,
                     max_rows_per_file=res.rows_per_shard)
    timings["pipeline"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    summary = publish_run(out, run_dir, rows, timings, to_dict(cfg), downloads)
    accounted = summary["videos_ok"] + summary["videos_failed"]
    if accounted != summary["videos_in"]:
        raise RuntimeError(f"{summary['videos_in'] - accounted} videos unaccounted for in {out}")
    print(f"preprocess: {summary['videos_ok']} videos ({summary['rows']} rows) -> {out / 'shards'}, "
          f"{summary['videos_failed']} failed {summary['failures_by_reason'] or ''} (errors: {out / 'errors.parquet'})")
    print(f"  time: {json.dumps(summary['timings_s'])}; task time per stage (all workers): "
          f"{json.dumps(summary['stage_task_s'])}; summary: {out / 'summary.json'}")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("debias preprocess", __doc__, positional=("ROOT", "input.root"), out_option=True)
    args = parser.parse_intermixed_args(argv)  # ROOT, --out and key=value in any order
    run_preprocess(load_job_config(PreprocessConfig, args))


if __name__ == "__main__":
    main()
