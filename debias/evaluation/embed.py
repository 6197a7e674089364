"""Batch inference with Ray Data: shard rows (or decoded videos) -> pooled backbone features and logits.

Two steps after the rows: `make_eval_clip_fn` renders each row's evaluation clips (CPU tasks, as the
trainer renders them), and `Embedder`, an actor that loads the run's model once, runs them through
the backbone (on a GPU where the cluster has one). The driver is `ray_jobs/embed.py`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from debias import storage
from debias.training.clips import ClipConfig
from debias.config import check
from debias.evaluation.inference import eval_clips, pick_device, run_clips

if TYPE_CHECKING:
    import ray.data

    from debias.training.runs import RunInfo

log = logging.getLogger(__name__)

# What the embedding rows carry from their input row beside the vectors.
PASS_COLUMNS = ["video_id", "clip_index", "label", "split", "source_path", "error", "error_code", "error_stage"]


@dataclass
class EmbedConfig:
    run: str = ""  # the training run folder (OUT/NAME of `debias pretrain`), local or a URI
    checkpoint: str = "latest"  # latest, best, or a checkpoint path
    input: str = ""  # a preprocess output (holds shards/) or a folder of videos (decoded with the run's settings)
    out: str = "out/embed"  # OUT/embeddings/*.parquet, OUT/errors.parquet, OUT/summary.json
    batch_size: int = 16  # rows per model call (each row is clip.eval_clips clips)
    actors: int = 1  # model actors, each holding one copy of the model
    gpus_per_actor: float = 1.0  # where the cluster has GPUs; on a CPU-only cluster the actors use CPUs
    cpus_per_actor: float = 1.0  # also the torch thread count of a CPU actor
    render_cpus: float = 0.5  # per clip-rendering task: a fraction, so it overlaps the model instead of queueing
    decode_workers: int = 1  # decode actors for a folder of videos (PyAV decodes a stream on ~one core)
    rows_per_file: int = 10000  # target rows per output Parquet file

    def __post_init__(self) -> None:
        check(bool(self.run), "run", "needs the training run folder (--run RUN)")
        check(bool(self.input), "input", "needs shards (a preprocess output) or a folder of videos (--input)")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.actors >= 1, "actors", "must be >= 1")
        check(self.gpus_per_actor >= 0, "gpus_per_actor", "must be >= 0")
        check(self.cpus_per_actor > 0, "cpus_per_actor", "must be > 0")
        check(self.render_cpus > 0, "render_cpus", "must be > 0")
        check(self.decode_workers >= 1, "decode_workers", "must be >= 1")
        check(self.rows_per_file >= 1, "rows_per_file", "must be >= 1")


def make_eval_clip_fn(cfg: ClipConfig) -> Callable[[dict], dict]:
    """Batch step: each row's evaluation clips. Rows with `error` set get all-zero clips (the model
    skips them). Reads: frames, height, width and PASS_COLUMNS (split and the error columns may be absent: ""). Writes: clips (N, eval_clips,
    clip_len, crop_px, crop_px, 3) uint8 and PASS_COLUMNS."""

    def render(batch: dict) -> dict:
        n = len(batch["frames"])
        # shard rows hold no error columns (they all decoded), decoded videos no split
        passed = {k: batch[k] if k in batch else np.full(n, "", dtype=object) for k in PASS_COLUMNS}
        good = passed["error"] == ""
        clips = np.zeros((n, cfg.eval_clips, cfg.clip_len, cfg.crop_px, cfg.crop_px, 3), np.uint8)
        if good.any():
            clips[good] = eval_clips(cfg, {k: batch[k][good] for k in ("frames", "height", "width")})
        return {"clips": clips, **passed}

    return render


def _list_column(values: torch.Tensor, good: np.ndarray) -> pa.Array:
    """(N, D) float32 -> list<float32>, null where the row failed."""
    flat = pa.array(values.numpy().astype(np.float32, copy=False).ravel())
    offsets = pa.array(np.arange(len(values) + 1, dtype=np.int32) * values.shape[1])
    return pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~good))


class Embedder:
    """The model step as a Ray Data actor: loads the run's model once, then per batch returns the
    pooled backbone features (`embedding`, list<float32> of the backbone's width) and the action
    logits (`logits`, list<float32> of the class count), each the mean over a row's clips.

    Reads: clips (N, C, T, H, W, 3) uint8 and PASS_COLUMNS. Writes a pyarrow table of PASS_COLUMNS,
    embedding and logits (both null for error rows).
    """

    def __init__(self, run: str, checkpoint: str, device: str = "auto", threads: int = 0) -> None:
        from debias.training.runs import load_model

        self.device = pick_device(device)
        if self.device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        self.model, info = load_model(run, checkpoint, device=str(self.device))
        self.width = self.model.action_head.in_features

    def __call__(self, batch: dict) -> pa.Table:
        good = np.asarray(batch["error"]) == ""
        features = torch.zeros(len(good), self.width)
        logits = torch.zeros(len(good), self.model.action_head.out_features)
        if good.any():
            features[torch.from_numpy(good)], logits[torch.from_numpy(good)] = run_clips(
                self.model, batch["clips"][good], self.device)
        columns = {k: pa.array(list(batch[k])) for k in PASS_COLUMNS}
        return pa.table({**columns, "embedding": _list_column(features, good), "logits": _list_column(logits, good)})


def video_rows(folder: str) -> list[dict]:
    """Decode-step rows for every video below `folder` (local or a URI): the id is the path under the folder
    without its extension, the label the first folder below it ("" for a video directly in it)."""
    from debias.evaluation.inference import video_row
    from debias.curation.sources import VIDEO_EXTENSIONS

    root = storage.absolute(folder)
    rows = []
    for path in storage.find_files(root):
        rel = path[len(root):].lstrip("/" + os.sep).replace(os.sep, "/")
        stem, ext = os.path.splitext(rel)
        if ext.lower() in VIDEO_EXTENSIONS and not storage.name(path).startswith("."):
            rows.append(video_row(path, stem, rel.split("/")[0] if "/" in rel else ""))
    return rows


def embed_dataset(cfg: EmbedConfig, info: RunInfo) -> tuple[ray.data.Dataset, str, float]:
    """The embedding pipeline over `cfg.input` up to the model step (nothing runs until it is consumed):
    shard rows (or videos through the curation's decode step, one error row per broken video) -> eval clips
    (CPU tasks) -> `Embedder` actors. Returns it, the input kind (shards or videos) and the GPUs per actor."""
    import ray
    from ray.data import ActorPoolStrategy

    from debias.cluster import init_ray
    from debias.curation.curate import Decoder
    from debias.evaluation.inference import decode_config
    from debias.curation.shards import COMMIT_FILE, shard_files

    from_shards = storage.is_file(storage.join(storage.absolute(cfg.input), COMMIT_FILE))
    if from_shards:
        files = shard_files(cfg.input)
        check(bool(files), "input", f"{cfg.input}: its committed run has no shard files")
    else:
        check(storage.is_dir(cfg.input), "input",
              f"{cfg.input}: neither curated data (a preprocess output with {COMMIT_FILE}) nor a folder of videos")
        rows = video_rows(cfg.input)
        check(bool(rows), "input", f"no videos in {cfg.input}")
    init_ray()
    gpus = cfg.gpus_per_actor if ray.cluster_resources().get("GPU", 0) > 0 else 0
    if from_shards:
        ds = ray.data.read_parquet(files).select_columns(["video_id", "clip_index", "label", "split", "source_path",
                                                          "frames", "height", "width"])
    else:
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 200)))
        ds = ds.flat_map(Decoder, fn_constructor_args=(decode_config(info.preprocessing),), num_cpus=1,
                         compute=ActorPoolStrategy(size=cfg.decode_workers))
    ds = ds.map_batches(make_eval_clip_fn(info.config.clip), batch_format="numpy", batch_size=cfg.batch_size,
                        num_cpus=cfg.render_cpus)
    ds = ds.map_batches(Embedder, fn_constructor_args=(info.uri, cfg.checkpoint, "cuda" if gpus else "cpu",
                                                       max(1, int(cfg.cpus_per_actor))),
                        batch_format="numpy", batch_size=cfg.batch_size, num_gpus=gpus, num_cpus=cfg.cpus_per_actor,
                        compute=ActorPoolStrategy(size=cfg.actors))
    return ds, "shards" if from_shards else "videos", gpus


def run_embed(cfg: EmbedConfig) -> dict:
    """Embed every shard row (or every video of a folder) of `cfg.input` with the run's model.

    Writes OUT/embeddings/*.parquet (PASS_COLUMNS, embedding, logits: one row per input row, failed videos
    with their error and null vectors), OUT/errors.parquet (the failed videos, ERROR_SCHEMA) and
    OUT/summary.json; returns the summary.
    """
    import ray

    from debias.training.models import build_backbone
    from debias.training.runs import read_run
    from debias.curation.shards import ERROR_COLUMNS, error_table, write_parquet

    t0 = time.perf_counter()
    info = read_run(cfg.run)  # a wrong run fails here, naming the folder, before Ray starts
    ds, kind, gpus = embed_dataset(cfg, info)
    out_dir = storage.join(storage.absolute(cfg.out), "embeddings")
    storage.delete(out_dir)  # Ray Data appends by default: a rerun must replace, not add
    ds.write_parquet(out_dir, min_rows_per_file=cfg.rows_per_file, max_rows_per_file=cfg.rows_per_file)
    done = ray.data.read_parquet(out_dir).select_columns(["video_id", "clip_index", "source_path", *ERROR_COLUMNS])
    done = pa.concat_tables(ray.get(done.to_arrow_refs()))
    errors = error_table(done)
    write_parquet(storage.join(storage.absolute(cfg.out), "errors.parquet"), errors)
    summary = {"run": info.uri, "checkpoint": cfg.checkpoint, "input": cfg.input, "input_kind": kind,
               "rows": done.num_rows, "failed": errors.num_rows,
               "failures_by_reason": dict(Counter(errors.column("error_code").to_pylist())),
               "embedding_dim": build_backbone(info.config.model)[1], "num_classes": info.num_actions,
               "actors": cfg.actors, "gpus_per_actor": gpus, "batch_size": cfg.batch_size,
               "total_s": round(time.perf_counter() - t0, 2)}
    storage.write_json(storage.join(storage.absolute(cfg.out), "summary.json"), summary)
    log.info("embed: %d rows (%d failed) -> %s in %.1f s", done.num_rows, errors.num_rows, out_dir, summary["total_s"])
    return summary
