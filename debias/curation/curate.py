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
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from debias import storage

from debias.curation import shards
from debias.config import check, to_dict
from debias.curation.download import DownloadConfig
from debias.curation.labels.config import LabelsConfig
from debias.curation.shards import ERROR_COLUMNS, ERROR_SCHEMA, SCHEMA_VERSION, Attempt, Resumed
from debias.curation.codecs import encode_jpeg_bgr
from debias.curation.sources import InputConfig, Row, ids_in_several_windows
from debias.curation.video import FramePicker, VideoError, bgr_to_rgb, decode_clips, pick_all, pick_at_rate, pick_clips, pick_uniform


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
    # for the model label actors and the finalize tasks
    decode_workers: int = 0
    label_actors: int = 1  # actors per model label provider, SAM and Places365 (each loads its model once)
    label_batch_size: int = 32  # videos per label batch (each holds decode.num_frames images)
    # GPUs per model actor (SAM, Places365) when the cluster has GPUs, else CPU; half, so that the mask and
    # scene actors share one GPU (with a whole one each, one GPU would deadlock the two stages)
    label_gpus: float = 0.5
    # Batches a model actor runs at once on a GPU (threads, each on its own CUDA stream): one batch's
    # JPEG decode overlaps another's forward pass. 1 on CPU whatever this says.
    label_calls_per_actor: int = 2
    # Rows per Parquet file. A file is the unit a killed run keeps, and the write stage holds up to this
    # many rows before it writes one: aim at files of ~100 MB, which rows of 16 frames at 112 px reach
    # at about 1000 and rows of every frame (sampling=paper) at about 100.
    rows_per_shard: int = 1000


@dataclass
class PreprocessConfig:
    out: str = "out/shards"
    seed: int = 0  # shuffles the row order once, so shards are not sorted by class
    input: InputConfig = field(default_factory=InputConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    # Rows written in input order. Ray Data's decoders finish in any order, so two curations of the same
    # inputs otherwise write differently ordered shards, and the models trained on them differ.
    preserve_order: bool = False

    def __post_init__(self) -> None:
        source = self.input.resolved_source()
        check(not self.download.enabled or source in ("kinetics", "minikinetics"), "download.enabled",
              f"downloads YouTube ids; input.source={source} has none")

    def annotations_dir(self) -> str:
        """labels.annotations_dir, else annotations/ beside the manifest (a local path or a URI)."""
        d = self.labels.annotations_dir
        return storage.absolute(d) if d else storage.join(storage.parent(storage.absolute(self.input.manifest)), "annotations")


class Decoder:
    """The decode step as a Ray Data actor: `make_decode_fn(cfg)` built once per worker process, then
    `steps` ((class, constructor args) of label steps, each a callable over a pandas batch) on the rows
    it decoded, in order.

    Reads what `make_decode_fn` reads; writes what it and the steps write. An actor pool rather than
    tasks because Ray Data 2.60's streaming executor kept about one decode task running whatever the
    task cap (instrumented: its resource allocator granted the flat_map 0-1 CPU); an actor pool of N
    keeps N cores decoding."""

    def __init__(self, cfg: DecodeConfig, steps: tuple[tuple[Callable, tuple], ...] = ()) -> None:
        # Steps that read frames (`reads_pixels`: motion masks, scene clusters) get them before JPEG
        # (`pixels`): decoding the JPEGs again cost them more than the rest of their work (profiled at
        # 112 px). Only for those: the copy costs the other steps' jobs time for nothing.
        self.decode = make_decode_fn(cfg, keep_pixels=any(getattr(step, "reads_pixels", False) for step, _ in steps))
        self.steps = [step(*args) for step, args in steps]

    def __call__(self, row: Row) -> list[Row]:
        rows = self.decode(row)
        if not self.steps:
            return rows
        batch = pd.DataFrame(rows)
        for step in self.steps:
            batch = step(batch)
        return batch.drop(columns="pixels", errors="ignore").to_dict("records")


def make_decode_fn(cfg: DecodeConfig, keep_pixels: bool = False) -> Callable[[Row], list[Row]]:
    """Decode one video's window, pick frames by the sampling policy, resize + centre-crop, JPEG-encode.
    1:N for flat_map: one row per clip (N = clips_per_video under `clips`, else 1); a video that
    fails gives one error row.

    Reads: source_path, time_start, time_end, error. Writes: frames, frame_indices, clip_index,
    padded, fps, height, width, t_decode_s (or error / error_code / error_stage); with `keep_pixels`
    also pixels, the clip's frames as (T, H, W, 3) uint8 RGB (None in an error row), for label steps in
    the same process (`debias.curation.labels.masks.decode_rows` reads them); never stored.
    """
    pick = cfg.picker()

    def decode(row: Row) -> list[Row]:
        t0 = time.perf_counter()
        empty = {**row, "frames": [], "frame_indices": [], "clip_index": 0, "padded": False, "fps": 0.0,
                 "height": 0, "width": 0, "t_decode_s": 0.0, **({"pixels": None} if keep_pixels else {})}
        if row["error"]:
            return [empty]
        end = row["time_end"] if row["time_end"] >= 0 else None
        try:
            video = decode_clips(row["source_path"], pick, cfg.short_side_px, cfg.crop_px,
                                 row["time_start"], end, threads=cfg.threads)
        except VideoError as e:
            return [shards.failed({**empty, "t_decode_s": time.perf_counter() - t0}, "decode", e.code, str(e))]
        rows = [{**empty, "frames": [encode_jpeg_bgr(f, cfg.jpeg_quality) for f in clip],
                 "frame_indices": idx.tolist(), "clip_index": i, "padded": bool(len(idx) > 1 and idx[-1] == idx[-2]),
                 "fps": video.fps, "height": cfg.crop_px, "width": cfg.crop_px,
                 **({"pixels": bgr_to_rgb(clip)} if keep_pixels else {})}
                for i, (clip, idx) in enumerate(zip(video.clips, video.frame_indices))]
        rows[0]["t_decode_s"] = time.perf_counter() - t0  # the video's time, once however many clips
        return rows

    return decode


def apply_per_row(batch: pd.DataFrame, fn: Callable[[pd.Series], dict], stage: str, empty: dict) -> pd.DataFrame:
    """Run `fn` on each good row; a row whose annotation is missing or broken becomes an error row."""
    results = []
    errors = batch[ERROR_COLUMNS].copy()
    for i, row in enumerate(batch.itertuples(index=False)):
        if row.error:
            results.append(empty)
            continue
        try:
            results.append(fn(row))
        except (OSError, KeyError, ValueError, IndexError) as e:
            results.append(empty)
            errors.iloc[i] = shards.error_fields(stage, f"{stage}_failed", f"{stage} for {row.video_id}: {type(e).__name__}: {e}")
    out = batch.copy()
    for key in empty:
        out[key] = [r[key] for r in results]
    out[ERROR_COLUMNS] = errors.values
    return out


def row_affecting_config(cfg: PreprocessConfig, mask_provider: str, scene_provider: str) -> dict:
    """The part of the config that decides the rows, for `shards.row_digest`, with the providers `auto`
    resolved to. Left out: `out`, `resources` (parallelism and file sizes), `decode.threads` (same
    frames), `preserve_order` (the same rows in another order) and `download` (its outcome reaches the rows through the files on disk, and the download
    pass resumes by itself through OUT/downloads.parquet)."""
    config = to_dict(cfg)
    for key in ("out", "resources", "download", "preserve_order"):
        config.pop(key)
    config["decode"].pop("threads")
    return {**config, "providers": [mask_provider, scene_provider]}


def rows_per_video(cfg: DecodeConfig) -> int:
    """Rows a video that decodes becomes (under `clips`, one per clip)."""
    return cfg.clips_per_video if cfg.sampling == "clips" else 1


def _batch_digest(batch: pa.Table) -> str:
    """Names a batch's side files by its rows, so a retried task overwrites instead of duplicating."""
    keys = sorted(f"{v}#{c}" for v, c in zip(batch.column("video_id").to_pylist(), batch.column("clip_index").to_pylist()))
    return hashlib.sha1("\n".join(keys).encode()).hexdigest()[:16]


def make_finalize_fn(attempt: Attempt) -> Callable[[pa.Table], pa.Table]:
    """Split a batch: error rows go to the attempt's error parts, the batch's summed per-stage task times
    (`t_*_s` columns) to its stats parts, good rows are cast to the shard schema (and then written).

    Reads: every SHARD_SCHEMA column, error, error_code, error_stage, t_*_s. Writes: the shard columns only.
    """

    def finalize(batch: pa.Table) -> pa.Table:
        digest = _batch_digest(batch)
        errors = shards.error_table(batch)
        if errors.num_rows:
            shards.write_parquet(storage.join(attempt.folder("errors"), f"errors-{digest}.parquet"), errors)
        stage_s = {name[2:-2]: float(np.sum(batch.column(name).to_numpy(zero_copy_only=False)))
                   for name in batch.column_names if name.startswith("t_") and name.endswith("_s")}
        storage.write_json(storage.join(attempt.folder("stats"), f"stats-{digest}.json"), stage_s)
        return shards.shard_table(batch)

    return finalize


def _counts(values: list[str]) -> dict[str, int]:
    return dict(sorted(pd.Series(values, dtype=object).value_counts().items()))


def publish_run(attempt: Attempt, resumed: Resumed, rows_in: list[Row], classes: list[str], scene_names: list[str],
                timings_s: dict[str, float], config: dict, downloads: dict[str, dict] | None = None,
                actors: dict[str, int | str] | None = None) -> dict:
    """Make a finished run visible (`shards.commit`): the error parts of every attempt become its error
    table, and summary.json counts videos (not clips) by outcome and reason, those taken over from a
    killed attempt (`videos_resumed`) and those this attempt curated (`videos_processed`). A clip
    written twice, or a video in neither the shards nor the error table, stops the publish."""
    error_files = resumed.error_files + storage.find_files(attempt.folder("errors"), ".parquet")
    errors = (pa.concat_tables([shards.read_parquet(f) for f in error_files]) if error_files
              else ERROR_SCHEMA.empty_table())
    files = resumed.shard_files + storage.find_files(attempt.folder("shards"), ".parquet")
    columns = ["video_id", "clip_index", "split", "mask_source", "scene_source"]
    table = pa.concat_tables([shards.read_parquet(f, columns) for f in files]) if files else None
    keys = Counter(zip(table.column("video_id").to_pylist(), table.column("clip_index").to_pylist())) if files else Counter()
    twice = [k for k, n in keys.items() if n > 1]
    if twice:
        raise RuntimeError(f"{len(twice)} clips written twice in {attempt.run_dir}, e.g. {twice[0]}: not published")
    ok_ids = {v for v, _clip in keys}
    failed: dict[str, str] = {}
    for video_id, code in zip(errors.column("video_id").to_pylist(), errors.column("error_code").to_pylist()):
        if video_id not in ok_ids:
            failed.setdefault(video_id, code)
    stage_task_s: Counter[str] = Counter()
    for f in storage.find_files(attempt.folder("stats"), ".json"):
        stage_task_s.update(storage.read_json(f))
    first = table.group_by("video_id").aggregate([("split", "min")]) if files else None
    summary = {
        "schema_version": SCHEMA_VERSION,
        "run_id": attempt.run_id,
        "videos_in": len(rows_in),
        "videos_ok": len(ok_ids),
        "videos_failed": len(failed),
        "videos_resumed": len(resumed.video_ids),  # taken over from a killed attempt of this run
        "videos_processed": len(rows_in) - len(resumed.video_ids),  # curated by this attempt
        "rows": table.num_rows if files else 0,  # more than videos_ok with decode.sampling=clips
        "failures_by_reason": _counts(list(failed.values())),
        "ok_by_split": _counts(first.column("split_min").to_pylist()) if files else {},
        "num_classes": len(classes),
        "num_scenes": len(scene_names),  # the scene classes used (length of scene_probs)
        # YouTube ids that are several clips (Mini-Kinetics ids matching several windows; Kinetics-600/700
        # ids published in several windows): all kept, listed so that nobody resolves them silently
        "ids_in_several_windows": ids_in_several_windows(rows_in),
        "mask_source": sorted(set(table.column("mask_source").to_pylist())) if files else [],
        "scene_source": sorted(set(table.column("scene_source").to_pylist())) if files else [],
        "downloads": ({"ok": sum(r["status"] == "ok" for r in downloads.values()),
                       "failed_by_reason": _counts([r["reason_code"] for r in downloads.values() if r["status"] == "failed"])}
                      if downloads is not None else None),
        "timings_s": {k: round(v, 2) for k, v in timings_s.items()},
        "actors": actors or {},  # per stage: its actors, or "in decode" for label steps run by the decoders
        "stage_task_s": {k: round(v, 2) for k, v in sorted(stage_task_s.items())},  # this attempt's, summed over workers
        "config": config,
    }
    missing = len(rows_in) - len(ok_ids) - len(failed)
    if missing:
        raise RuntimeError(f"{missing} videos unaccounted for in {attempt.run_dir}: not published")
    shards.commit(attempt, resumed, errors, classes, scene_names, summary)
    return summary
