"""Curation steps: manifest -> decoded, sampled, JPEG-encoded clips -> masks -> scene labels -> shard rows.

Each step is a plain function over rows (settings bound by a `make_*_fn` factory) or, when it holds
a model or other per-worker state, a small class loading it in `__init__` and running a batch in
`__call__`. The Ray driver (`ray_jobs/preprocess.py`) chains them and sets their resources.

A row that fails carries `error` (readable, names the file), `error_code` (short category) and
`error_stage`; later steps pass it through untouched and `make_finalize_fn` moves it to the error
table, so every input video ends in exactly one of the shards or the error table.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from debias.config import check
from debias.download import DownloadConfig
from debias.labels import LabelsConfig
from debias.schema import ERROR_SCHEMA, SCHEMA_VERSION, SHARD_SCHEMA
from debias.sources import InputConfig, Row
from debias.video import (FramePicker, VideoError, decode_clips, encode_jpeg_bgr, pick_all, pick_at_rate,
                          pick_clips, pick_uniform)


@dataclass
class DecodeConfig:
    """How frames are sampled from each video's window and stored. Policies (`sampling`):
    uniform: `num_frames` spread evenly over the window (one row per video);
    paper: every frame at the native rate (SDN's; training picks a `num_frames` window at random);
    seed: `sample_fps` frames a second from the window's start, the first `num_frames`, the last one
      repeated when the video is shorter (the seed study's; such rows have `padded` set);
    clips: `clips_per_video` rows per video (`clip_index`), each `num_frames` consecutive frames.
    Except under `seed`, a window with fewer than `num_frames` frames is an error (`too_short`)."""

    sampling: Literal["uniform", "paper", "seed", "clips"] = "uniform"
    num_frames: int = 16  # the clip length: frames stored (uniform, seed) or per clip (clips), minimum (paper)
    sample_fps: float = 1.0  # seed: frames sampled per second of video
    clips_per_video: int = 4  # clips: rows per video
    short_side_px: int = 32  # resize so the short side is this, then centre-crop (real videos: 128)
    crop_px: int = 32  # (real videos: 112, the paper's)
    jpeg_quality: int = 90
    threads: int = 1  # PyAV decoder threads per task: 1 keeps one task on one core (resources.decode_cpus)

    def __post_init__(self) -> None:
        check(self.num_frames >= 1, "num_frames", "must be >= 1")
        check(self.sample_fps > 0, "sample_fps", "must be > 0")
        check(self.clips_per_video >= 1, "clips_per_video", "must be >= 1")
        check(self.crop_px <= self.short_side_px, "crop_px", f"must be <= short_side_px ({self.short_side_px})")
        check(1 <= self.jpeg_quality <= 100, "jpeg_quality", "must be in [1, 100]")
        check(self.threads >= 0, "threads", "must be >= 0 (0 = as many as FFmpeg likes)")

    def picker(self) -> FramePicker:
        """The frame choice of this policy, as `decode_clips` takes it."""
        if self.sampling == "paper":
            return partial(pick_all, num_frames=self.num_frames)
        if self.sampling == "seed":
            return partial(pick_at_rate, sample_fps=self.sample_fps, num_frames=self.num_frames)
        if self.sampling == "clips":
            return partial(pick_clips, num_frames=self.num_frames, num_clips=self.clips_per_video)
        return partial(pick_uniform, num_frames=self.num_frames)


@dataclass
class ResourcesConfig:
    """Per-stage parallelism; the driver passes these to Ray Data where it makes each call."""

    decode_cpus: float = 1.0  # CPUs per decode actor (PyAV decodes one stream on ~1 core)
    # decode actors (one video at a time each); 0 = one per decode_cpus of the cluster, less 2 CPUs
    # for the label actors and the finalize tasks
    decode_workers: int = 0
    label_actors: int = 1  # actors per label provider (each loads its model once)
    label_batch_size: int = 32  # videos per label batch (each holds decode.num_frames images)
    # GPUs per model actor (SAM, Places365) when the cluster has GPUs, else CPU; half, so that the mask and
    # scene actors share one GPU (with a whole one each, one GPU would deadlock the two stages)
    label_gpus: float = 0.5
    # Batches a model actor runs at once on a GPU (threads, each on its own CUDA stream): one batch's
    # JPEG decode overlaps another's forward pass. 1 on CPU whatever this says.
    label_calls_per_actor: int = 2
    rows_per_shard: int = 2000  # target rows per Parquet file


@dataclass
class PreprocessConfig:
    out: str = "out/shards"
    seed: int = 0  # shuffles the row order once, so shards are not sorted by class
    input: InputConfig = field(default_factory=InputConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)

    def __post_init__(self) -> None:
        source = self.input.resolved_source()
        check(not self.download.enabled or source in ("kinetics", "minikinetics"), "download.enabled",
              f"downloads YouTube ids; input.source={source} has none")

    def annotations_dir(self) -> Path:
        d = self.labels.annotations_dir
        return Path(d) if d else Path(self.input.manifest).parent / "annotations"


def _error(row: Row, stage: str, code: str, reason: str) -> Row:
    return {**row, "error": reason, "error_code": code, "error_stage": stage}


class Decoder:
    """The decode step as a Ray Data actor: `make_decode_fn(cfg)` built once per worker process.

    Same rows in and out as `make_decode_fn`. An actor pool rather than tasks because Ray Data 2.60's
    streaming executor kept about one decode task running whatever the task cap (instrumented: its
    resource allocator granted the flat_map 0-1 CPU); an actor pool of N keeps N cores decoding
    (measured: 2 actors 1.76x one on 2 cores, README)."""

    def __init__(self, cfg: DecodeConfig) -> None:
        self.decode = make_decode_fn(cfg)

    def __call__(self, row: Row) -> list[Row]:
        return self.decode(row)


def make_decode_fn(cfg: DecodeConfig) -> Callable[[Row], list[Row]]:
    """Decode one video's window, pick frames by the sampling policy, resize + centre-crop, JPEG-encode.
    1:N for flat_map: one row per clip (N = clips_per_video under `clips`, else 1); a video that
    fails gives one error row.

    Reads: source_path, time_start, time_end, error. Writes: frames, frame_indices, clip_index,
    padded, fps, height, width, t_decode_s (or error / error_code / error_stage).
    """
    pick = cfg.picker()

    def decode(row: Row) -> list[Row]:
        t0 = time.perf_counter()
        empty = {**row, "frames": [], "frame_indices": [], "clip_index": 0, "padded": False, "fps": 0.0,
                 "height": 0, "width": 0, "t_decode_s": 0.0}
        if row["error"]:
            return [empty]
        end = row["time_end"] if row["time_end"] >= 0 else None
        try:
            video = decode_clips(row["source_path"], pick, cfg.short_side_px, cfg.crop_px,
                                 row["time_start"], end, threads=cfg.threads)
        except VideoError as e:
            return [_error({**empty, "t_decode_s": time.perf_counter() - t0}, "decode", e.code, str(e))]
        rows = [{**empty, "frames": [encode_jpeg_bgr(f, cfg.jpeg_quality) for f in clip],
                 "frame_indices": idx.tolist(), "clip_index": i, "padded": bool(len(idx) > 1 and idx[-1] == idx[-2]),
                 "fps": video.fps, "height": cfg.crop_px, "width": cfg.crop_px}
                for i, (clip, idx) in enumerate(zip(video.clips, video.frame_indices))]
        rows[0]["t_decode_s"] = time.perf_counter() - t0  # the video's time, once however many clips
        return rows

    return decode


def _apply_per_row(batch: pd.DataFrame, fn: Callable[[pd.Series], dict], stage: str, empty: dict) -> pd.DataFrame:
    """Run `fn` on each good row; a row whose annotation is missing or broken becomes an error row."""
    results = []
    errors = batch[["error", "error_code", "error_stage"]].copy()
    for i, row in enumerate(batch.itertuples(index=False)):
        if row.error:
            results.append(empty)
            continue
        try:
            results.append(fn(row))
        except (OSError, KeyError, ValueError, IndexError) as e:
            results.append(empty)
            errors.iloc[i] = [f"{stage} for {row.video_id}: {type(e).__name__}: {e}", f"{stage}_failed", stage]
    out = batch.copy()
    for key in empty:
        out[key] = [r[key] for r in results]
    out[["error", "error_code", "error_stage"]] = errors.values
    return out


def _batch_digest(batch: pa.Table) -> str:
    """Names a batch's side files by its rows, so a retried task overwrites instead of duplicating."""
    keys = sorted(f"{v}#{c}" for v, c in zip(batch.column("video_id").to_pylist(), batch.column("clip_index").to_pylist()))
    return hashlib.sha1("\n".join(keys).encode()).hexdigest()[:16]


def make_finalize_fn(run_dir: str) -> Callable[[pa.Table], pa.Table]:
    """Split a batch: error rows go to `run_dir/_errors/`, the batch's summed per-stage task times
    (`t_*_s` columns) to `run_dir/_stats/`, good rows are cast to SHARD_SCHEMA.

    Reads: every SHARD_SCHEMA column, error, error_code, error_stage, t_*_s. Writes: the shard columns only.
    """

    def finalize(batch: pa.Table) -> pa.Table:
        digest = _batch_digest(batch)
        failed = np.asarray(batch.column("error").to_pylist(), dtype=object) != ""
        if failed.any():
            bad = batch.filter(pa.array(failed))
            errors = pa.table({"video_id": bad.column("video_id"), "source_path": bad.column("source_path"),
                               "stage": bad.column("error_stage"), "reason_code": bad.column("error_code"),
                               "reason": bad.column("error")}, schema=ERROR_SCHEMA)
            (Path(run_dir) / "_errors").mkdir(parents=True, exist_ok=True)
            pq.write_table(errors, Path(run_dir) / "_errors" / f"errors-{digest}.parquet")
        stage_s = {name[2:-2]: float(np.sum(batch.column(name).to_numpy(zero_copy_only=False)))
                   for name in batch.column_names if name.startswith("t_") and name.endswith("_s")}
        (Path(run_dir) / "_stats").mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "_stats" / f"stats-{digest}.json").write_text(json.dumps(stage_s))
        good = batch.filter(pa.array(~failed))
        columns = {"schema_version": pa.array([SCHEMA_VERSION] * good.num_rows, pa.int16())}
        for f in SHARD_SCHEMA:
            if f.name != "schema_version":
                columns[f.name] = good.column(f.name).cast(f.type)
        return pa.table(columns, schema=SHARD_SCHEMA)

    return finalize


def shard_files(shards_dir: str | Path) -> list[Path]:
    return sorted(Path(shards_dir).glob("*.parquet"))


def _replace_file(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def publish_run(out: str | Path, run_dir: str | Path, rows_in: list[Row], timings_s: dict[str, float],
                config: dict, downloads: dict[str, dict] | None = None) -> dict:
    """Make a finished run visible: its shards replace OUT/shards in one rename (a reader sees the old
    set or the new one, never a mix or a half-written file), the per-batch error files become
    OUT/errors.parquet, and OUT/summary.json counts videos (not clips) by outcome and reason."""
    out, run_dir = Path(out), Path(run_dir)
    error_files = sorted((run_dir / "_errors").glob("*.parquet"))
    errors = (pa.concat_tables([pq.read_table(f) for f in error_files]) if error_files
              else ERROR_SCHEMA.empty_table())
    files = shard_files(run_dir / "shards")
    shards = pq.read_table(files, columns=["video_id", "split", "mask_source", "scene_source"]) if files else None
    ok_ids = set(shards.column("video_id").to_pylist()) if shards is not None else set()
    failed: dict[str, str] = {}
    for video_id, code in zip(errors.column("video_id").to_pylist(), errors.column("reason_code").to_pylist()):
        if video_id not in ok_ids:
            failed.setdefault(video_id, code)
    stage_task_s: dict[str, float] = {}
    for f in (run_dir / "_stats").glob("*.json"):
        for stage, seconds in json.loads(f.read_text()).items():
            stage_task_s[stage] = stage_task_s.get(stage, 0.0) + seconds
    first = shards.group_by("video_id").aggregate([("split", "min")]) if shards is not None else None
    summary = {
        "schema_version": SCHEMA_VERSION,
        "videos_in": len(rows_in),
        "videos_ok": len(ok_ids),
        "videos_failed": len(failed),
        "rows": shards.num_rows if shards is not None else 0,  # more than videos_ok with decode.sampling=clips
        "failures_by_reason": dict(sorted(pd.Series(list(failed.values()), dtype=object).value_counts().items())),
        "ok_by_split": pd.Series(first.column("split_min").to_pylist()).value_counts().to_dict() if first else {},
        "mask_source": sorted(set(shards.column("mask_source").to_pylist())) if shards else [],
        "scene_source": sorted(set(shards.column("scene_source").to_pylist())) if shards else [],
        "downloads": ({"ok": sum(r["status"] == "ok" for r in downloads.values()),
                       "failed_by_reason": dict(sorted(pd.Series([r["reason_code"] for r in downloads.values()
                                                                  if r["status"] == "failed"], dtype=object).value_counts().items()))}
                      if downloads is not None else None),
        "timings_s": {k: round(v, 2) for k, v in timings_s.items()},
        "stage_task_s": {k: round(v, 2) for k, v in sorted(stage_task_s.items())},  # summed over workers
        "config": config,
    }
    old = out / f".shards-old-{run_dir.name}"
    if (out / "shards").exists():
        os.replace(out / "shards", old)
    os.replace(run_dir / "shards", out / "shards")
    shutil.rmtree(old, ignore_errors=True)
    _replace_file(out / "errors.parquet", lambda p: pq.write_table(errors, p))
    _replace_file(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=1)))
    shutil.rmtree(run_dir, ignore_errors=True)
    return summary
