"""The `preprocess` job: a dataset's videos into committed Parquet shards, as one Ray Data chain
(download, decode and sample with the label steps that need no model, SAM masks, Places365 labels,
finalize, write), resumable from a killed attempt. `run_preprocess(cfg)` is the job; the driver is
ray_jobs/preprocess.py, the shard layout debias/curation/shards.py."""

from __future__ import annotations

import json
import logging
import pickle
import random
import time

import ray
from ray.data import ActorPoolStrategy, TaskPoolStrategy

from debias import storage

from debias.curation import shards
from debias.cluster import init_ray
from debias.config import to_dict
from debias.curation.curate import (Decoder, PreprocessConfig, make_finalize_fn, publish_run, row_affecting_config,
                           rows_per_video)
from debias.curation.download import DownloadConfig, make_download_fn, merge_download_status, skip_known_dead
from debias.curation.labels.masks import mask_step
from debias.curation.labels.scenes import SceneStep, scene_step
from debias.curation.sources import Row, read_source
from debias.curation.labels.weights import resolve_providers

log = logging.getLogger(__name__)


def download_videos(rows: list[Row], cfg: DownloadConfig, videos_dir: str, out: str) -> tuple[list[Row], dict]:
    """The download pass, before decoding (the scene-cluster fit and the decoders need the files)."""
    downloads = merge_download_status(out)  # a killed run's status parts count too
    rows = skip_known_dead(rows, downloads, cfg)
    on_disk = [bool(r["error"]) or storage.is_file(r["source_path"]) for r in rows]
    todo = [r for r, done in zip(rows, on_disk) if not done]
    # Rows that skip the download still carry its time column: one schema for every block.
    done = [{**r, "t_download_s": 0.0} for r, done in zip(rows, on_disk) if done]
    log.info("download: %d videos to fetch, %d on disk or known dead", len(todo), len(done))
    if todo:
        init_ray()
        # 0. download, 1:1, videos_per_task videos a task in turn. Network-bound: a twentieth of a CPU
        #    each, so that download.concurrency alone (not the core count) bounds the load on YouTube.
        ds = ray.data.from_items(todo).map_batches(
            make_download_fn(cfg, str(videos_dir), storage.join(out, "_downloads")), batch_format="pandas",
            batch_size=cfg.videos_per_task, num_cpus=0.05, compute=TaskPoolStrategy(size=cfg.concurrency))
        done += [{k: v.item() if hasattr(v, "item") else v for k, v in r.items()} for r in ds.take_all()]
    return done, merge_download_status(out)


def _scene_step(cfg: PreprocessConfig, provider: str, weights: dict, rows: list[Row], run_id: str | None,
                out: str) -> SceneStep:
    """The scene step (class, constructor args, scene names: K of the clusters fitted). A resumed run reuses the one its first attempt saved
    (`scene_step.pkl`), so that its clusters are the ones the videos it took over were labelled with,
    and the k-means fit is not decoded again."""
    saved = storage.join(out, "runs", run_id, "scene_step.pkl") if run_id else ""
    if saved and storage.is_file(saved):
        return pickle.loads(storage.read_bytes(saved))
    return scene_step(cfg, provider, weights, rows)  # clusters: k-means fitted here, on a sample


def curation_chain(todo: list[Row], cfg: PreprocessConfig, in_decode: tuple, model_steps: dict[str, tuple],
                   decoders: int, gpus: float, attempt: shards.Attempt) -> None:
    """The Ray Data chain from the videos to this attempt's Parquet shards, run to its end.

    `in_decode`: the label steps without a model, run inside the decode actors on the rows each has just
    decoded (so they scale with the decoders on any node, and no row crosses the object store for them);
    `model_steps`: "masks" / "scenes" -> (class, constructor args) of the model providers, each a stage
    of its own. `gpus`: each model actor's GPU share (0 on a CPU cluster)."""
    res = cfg.resources

    def label_pool() -> ActorPoolStrategy:
        """A model actor on a GPU runs label_calls_per_actor batches at once, each thread on its own
        CUDA stream, so that one batch's JPEG decode overlaps another's forward pass."""
        calls = res.label_calls_per_actor if gpus else 1
        return ActorPoolStrategy(size=res.label_actors, max_concurrent_calls_per_actor=calls,
                                 enable_true_multi_threading=calls > 1)

    # Blocks of <= ~32 videos once there are many (from_items stops at 200 blocks, which would cap the
    # decode tasks of a big cluster at 200); one block a video for a small run.
    ds = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo), max(200, len(todo) // 32))))
    ds.context.execution_options.preserve_order = cfg.preserve_order  # this dataset's option, not the process's
    # 1. decode + sample + resize/crop + JPEG (+ the label steps without a model), 1:N (N =
    #    decode.clips_per_video under sampling=clips, else 1; a failure is one error row, not a lost
    #    row). CPU-bound, decode_cpus per actor (PyAV decodes a stream on ~one core with
    #    decode.threads=1). An actor pool: Ray Data's task scheduler kept ~1 decode task busy
    #    (Decoder's docstring). `decoders` actors; a shared cluster sets decode_workers lower to keep
    #    cores for training.
    ds = ds.flat_map(Decoder, fn_constructor_args=(cfg.decode, in_decode), num_cpus=res.decode_cpus,
                     compute=ActorPoolStrategy(size=decoders))
    if "masks" in model_steps:
        # 2. human masks (detector + SAM), 1:1. An actor so the models load once per worker; half a
        #    CPU so that it never starves the decoders; a GPU share where the cluster has GPUs.
        step, args = model_steps["masks"]
        ds = ds.map_batches(step, fn_constructor_args=args, batch_format="pandas", batch_size=res.label_batch_size,
                            num_cpus=0.5, num_gpus=gpus, compute=label_pool())
    if "scenes" in model_steps:
        # 3. Places365 scene labels, 1:1, same resources and reasons as the masks.
        step, args = model_steps["scenes"]
        ds = ds.map_batches(step, fn_constructor_args=args, batch_format="pandas", batch_size=res.label_batch_size,
                            num_cpus=0.5, num_gpus=gpus, compute=label_pool())
    # 4. finalize, 1:(0 or 1): error rows go to the attempt's error parts, good rows are cast to the
    #    shard schema. Arrow-only work: a quarter CPU.
    ds = ds.map_batches(make_finalize_fn(attempt), batch_format="pyarrow", num_cpus=0.25)
    # 5. size-targeted Parquet shards into this attempt's folder: each file, once whole, is what a
    #    resumed run keeps (a kill loses at most the files being filled). A quarter CPU a write task: at
    #    one CPU a write waits for a whole free CPU beside the decoders, so the files are written late and
    #    the rows pile up in the object store meanwhile (docs/benchmarks.md: memory, what a kill loses).
    fs, path = storage.filesystem(attempt.folder("shards"))
    ds.write_parquet(path, filesystem=fs, min_rows_per_file=res.rows_per_shard, max_rows_per_file=res.rows_per_shard,
                     ray_remote_args={"num_cpus": 0.25})


def start_run(cfg: PreprocessConfig, out: str, digest: str, run_id: str | None, videos: int,
              scenes_step: SceneStep) -> tuple[shards.Attempt, shards.Resumed]:
    """This run's attempt: the killed run `run_id` of the same rows resumed (what it took over, said
    first), or a new run. The first write to OUT."""
    others = shards.other_unfinished_runs(out, run_id)
    attempt, resumed = shards.start_attempt(out, digest, run_id, rows_per_video(cfg.decode))
    if run_id:
        log.info("preprocess: resuming run %s: %d of %d videos taken over from its killed attempts", run_id,
                 len(resumed.video_ids), videos)
        for note in resumed.notes:
            log.info("  %s", note)
    else:
        storage.write_bytes(storage.join(attempt.run_dir, "scene_step.pkl"), pickle.dumps(scenes_step))
        log.info("preprocess: run %s starts afresh%s", attempt.run_id,
                 f" (killed runs {others} in {out}/runs hold other rows: another config or other inputs; kept "
                 "for a run of theirs to resume, delete them to free the space)" if others else "")
    return attempt, resumed


def run_preprocess(cfg: PreprocessConfig) -> dict:
    """The job: every input video into the committed shards or the error table; returns the summary."""
    out = storage.absolute(cfg.out)
    storage.check_storage(out, "out")
    t0 = time.perf_counter()
    rows, classes = read_source(cfg.input)  # a missing manifest or folder fails here, before any work
    timings = {"read_source": time.perf_counter() - t0}
    # auto -> SAM / Places365 where their weights load, else the weight-free providers (announced);
    # a named model with missing or corrupt weights fails here, before any download or decoding.
    mask_provider, scene_provider, weights = resolve_providers(cfg.labels)
    digest = shards.row_digest(row_affecting_config(cfg, mask_provider, scene_provider), rows, classes)
    run_id = shards.find_unfinished_run(out, digest)
    t = time.perf_counter()
    masks_step = mask_step(cfg, mask_provider, weights)
    scenes_step = _scene_step(cfg, scene_provider, weights, rows, run_id, out)
    scenes_step[0](*scenes_step[1])  # a provider that cannot load fails here, before any video is decoded
    timings["labels_setup"] = time.perf_counter() - t

    # Nothing is written to OUT before this point: a bad input or provider leaves it untouched.
    attempt, resumed = start_run(cfg, out, digest, run_id, len(rows), scenes_step)
    todo = [r for r in rows if r["video_id"] not in resumed.video_ids]
    downloads = None
    if cfg.download.enabled:
        t = time.perf_counter()
        todo, downloads = download_videos(todo, cfg.download, str(cfg.input.videos_dir()), out)
        timings["download"] = time.perf_counter() - t
    random.Random(cfg.seed).shuffle(todo)  # shards come out class-mixed, which a streaming reader needs

    t = time.perf_counter()
    init_ray()
    timings["ray_start"] = time.perf_counter() - t
    res, cluster = cfg.resources, ray.cluster_resources()
    # The model providers take label_gpus GPUs per actor where the cluster has GPUs (they autocast there).
    gpus = res.label_gpus if cluster.get("GPU", 0) > 0 else 0
    # Decode actors: decode_workers, or one per decode_cpus of the CPUs beside 2 for the model label
    # actors and the finalize tasks.
    decoders = res.decode_workers or max(1, int((cluster.get("CPU", 1) - 2) // res.decode_cpus))
    models = {"masks": mask_provider == "sam", "scenes": scene_provider == "places365"}
    steps = {"masks": masks_step[:2], "scenes": scenes_step[:2]}
    t = time.perf_counter()
    if todo:  # empty when a killed attempt had written every video but not committed
        curation_chain(todo, cfg, tuple(steps[k] for k in steps if not models[k]),
                       {k: steps[k] for k in steps if models[k]}, decoders, gpus, attempt)
    timings["pipeline"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    actors = {"decode": decoders, **{k: res.label_actors if models[k] else "in decode" for k in steps}}
    summary = publish_run(attempt, resumed, rows, classes, scenes_step.names, timings, to_dict(cfg), downloads, actors)
    log.info("preprocess: %d videos (%d rows) -> %s, %d failed %s; %d taken over, %d curated now",
             summary["videos_ok"], summary["rows"], attempt.run_dir, summary["videos_failed"],
             summary["failures_by_reason"] or "", summary["videos_resumed"], summary["videos_processed"])
    log.info("  time: %s; task time per stage (all workers): %s; summary: %s (committed: %s)", json.dumps(summary["timings_s"]),
             json.dumps(summary["stage_task_s"]), storage.join(attempt.run_dir, "summary.json"),
             storage.join(out, shards.COMMIT_FILE))
    return summary
