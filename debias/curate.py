"""Curation steps: manifest -> decoded, sampled, JPEG-encoded clips -> masks -> scene labels -> shard rows.

Each step is a plain function over rows (settings bound by a `make_*_fn` factory) or, when it holds
a model or other per-worker state, a small class loading it in `__init__` and running a batch in
`__call__`. The Ray driver (`ray_jobs/preprocess.py`) chains them and sets their resources.

A row that fails carries `error` (readable, names the file), `error_code` (short category) and
`error_stage`; later steps pass it through untouched and `make_finalize_fn` moves it to the error
table, so every input video ends in exactly one of the shards or the error table.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from debias.config import check
from debias.schema import ERROR_SCHEMA, SCHEMA_VERSION, SHARD_SCHEMA
from debias.synth import load_annotation
from debias.video import (VideoError, decode_window, encode_jpeg, pack_mask, resize_crop,
                          sample_uniform)

Row = dict


@dataclass
class InputConfig:
    """Where the videos are: a Kinetics-style CSV (label,youtube_id,time_start,time_end,split)."""

    manifest: str = "out/synth/source/manifest.csv"
    videos_dir: str = ""  # default: videos/ beside the manifest
    video_template: str = "{youtube_id}.mp4"  # file name under videos_dir

    def resolved_videos_dir(self) -> Path:
        return Path(self.videos_dir) if self.videos_dir else Path(self.manifest).parent / "videos"


@dataclass
class DecodeConfig:
    """How clips are sampled and stored."""

    num_frames: int = 16  # frames stored per video, spread uniformly over its time window
    short_side_px: int = 32  # resize so the short side is this, then centre-crop
    crop_px: int = 32
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        check(self.num_frames >= 1, "num_frames", "must be >= 1")
        check(self.crop_px <= self.short_side_px, "crop_px", f"must be <= short_side_px ({self.short_side_px})")
        check(1 <= self.jpeg_quality <= 100, "jpeg_quality", "must be in [1, 100]")


@dataclass
class LabelsConfig:
    """Who produces human masks and scene labels. `annotations` reads a dataset's own ground truth
    (the synthetic benchmark's `annotations/` folder); `none` stores empty masks / no scene label
    (and says so in every row), for videos that have no labels yet. SAM / Places365 plug in beside them."""

    mask_provider: Literal["annotations", "none"] = "annotations"
    scene_provider: Literal["annotations", "none"] = "annotations"
    annotations_dir: str = ""  # default: annotations/ beside the manifest


@dataclass
class ResourcesConfig:
    """Per-stage parallelism; the driver passes these to Ray Data where it makes each call."""

    decode_cpus: float = 1.0  # CPUs per decode task (PyAV decodes one stream on ~1 core)
    decode_tasks: int = 0  # max concurrent decode tasks; 0 = as many as the cluster's CPUs allow
    label_actors: int = 1  # actors per label provider
    label_batch_size: int = 32
    rows_per_shard: int = 2000  # target rows per Parquet file


@dataclass
class PreprocessConfig:
    out: str = "out/shards"
    seed: int = 0  # shuffles the row order once, so shards are not sorted by class
    input: InputConfig = field(default_factory=InputConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def annotations_dir(self) -> Path:
        d = self.labels.annotations_dir
        return Path(d) if d else Path(self.input.manifest).parent / "annotations"


def _error(row: Row, stage: str, code: str, reason: str) -> Row:
    return {**row, "error": reason, "error_code": code, "error_stage": stage}


def read_manifest(cfg: InputConfig) -> tuple[list[Row], list[str]]:
    """Rows of the manifest (one per video) and the sorted class names.

    Malformed rows become error rows (stage `source`) instead of failing the job.
    """
    path = Path(cfg.manifest)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path} (input.manifest)")
    videos_dir = cfg.resolved_videos_dir()
    rows: list[Row] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"label", "youtube_id", "split"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: manifest lacks columns {sorted(missing)}")
        for line_no, rec in enumerate(reader, start=2):
            video_id = (rec.get("youtube_id") or "").strip()
            row = {"video_id": video_id or f"line{line_no}", "label": (rec.get("label") or "").strip(),
                   "split": (rec.get("split") or "").strip(), "time_start": 0.0, "time_end": -1.0,
                   "source_path": str(videos_dir / cfg.video_template.format(youtube_id=video_id)),
                   "error": "", "error_code": "", "error_stage": ""}
            try:
                row["time_start"] = float(rec.get("time_start") or 0.0)
                row["time_end"] = float(rec["time_end"]) if rec.get("time_end") else -1.0
                problem = ("no youtube_id" if not video_id else "no label" if not row["label"]
                           else "no split" if not row["split"] else "")
            except ValueError as e:
                problem = f"bad time window ({e})"
            if problem:
                row = _error(row, "source", "malformed_manifest_row", f"{path}:{line_no}: {problem}")
            rows.append(row)
    classes = sorted({r["label"] for r in rows if not r["error"]})
    index = {c: i for i, c in enumerate(classes)}
    for r in rows:
        r["label_id"] = index.get(r["label"], -1)
    return rows, classes


def make_decode_fn(cfg: DecodeConfig) -> Callable[[Row], Row]:
    """Decode one video's time window, sample `num_frames`, resize + centre-crop, JPEG-encode.

    Reads: source_path, time_start, time_end, error. Writes: frames, frame_indices, fps, height, width
    (or error / error_code / error_stage).
    """

    def decode(row: Row) -> Row:
        empty = {**row, "frames": [], "frame_indices": [], "fps": 0.0, "height": 0, "width": 0}
        if row["error"]:
            return empty
        end = row["time_end"] if row["time_end"] >= 0 else None
        try:
            video = decode_window(row["source_path"], row["time_start"], end)
            picked = sample_uniform(len(video.frames), cfg.num_frames)
            frames = [resize_crop(video.frames[i], cfg.short_side_px, cfg.crop_px) for i in picked]
            jpegs = [encode_jpeg(f, cfg.jpeg_quality) for f in frames]
        except VideoError as e:
            return _error(empty, "decode", e.code, str(e))
        return {**empty, "frames": jpegs, "frame_indices": video.frame_indices[picked].tolist(),
                "fps": video.fps, "height": cfg.crop_px, "width": cfg.crop_px}

    return decode


class AnnotationMasks:
    """Human masks from a dataset's own per-frame annotations, mapped onto the stored pixels.

    Reads: video_id, frame_indices, error. Writes: human_masks, mask_coverage, person_frac, mask_source.
    """

    source = "annotations"

    def __init__(self, annotations_dir: str, decode: DecodeConfig) -> None:
        self.dir = Path(annotations_dir)
        self.decode = decode

    def _one(self, row: pd.Series) -> dict:
        masks, _scene = load_annotation(self.dir / f"{row.video_id}.npz")
        picked = masks[np.asarray(row.frame_indices, dtype=np.int64)]
        stored = [resize_crop(m.astype(np.uint8), self.decode.short_side_px, self.decode.crop_px, nearest=True) > 0
                  for m in picked]
        coverage = [float(m.mean()) for m in stored]
        return {"human_masks": [pack_mask(m) for m in stored], "mask_coverage": coverage,
                "person_frac": float(np.mean([c > 0 for c in coverage])), "mask_source": self.source}

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return _apply_per_row(batch, self._one, "masks",
                              {"human_masks": [], "mask_coverage": [], "person_frac": 0.0, "mask_source": ""})


class AnnotationScenes:
    """Scene labels from a dataset's annotations: hard id and a one-hot soft label.

    Reads: video_id, error. Writes: scene_id, scene_probs, scene_source.
    """

    source = "annotations"

    def __init__(self, annotations_dir: str) -> None:
        self.dir = Path(annotations_dir)
        names_file = self.dir / "scenes.json"
        if not names_file.is_file():
            raise FileNotFoundError(f"scene names not found: {names_file} (labels.annotations_dir)")
        self.num_scenes = len(json.loads(names_file.read_text()))

    def _one(self, row: pd.Series) -> dict:
        _masks, scene_id = load_annotation(self.dir / f"{row.video_id}.npz")
        probs = np.zeros(self.num_scenes, np.float32)
        probs[scene_id] = 1.0
        return {"scene_id": scene_id, "scene_probs": probs.tolist(), "scene_source": self.source}

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return _apply_per_row(batch, self._one, "scenes", {"scene_id": -1, "scene_probs": [], "scene_source": ""})


class NoMasks:
    """Empty masks (no person found): the mask loss skips such clips. Reads: frame_indices, height,
    width, error. Writes: human_masks, mask_coverage, person_frac, mask_source = "none"."""

    source = "none"

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        def one(row: pd.Series) -> dict:
            n, empty = len(row.frame_indices), pack_mask(np.zeros((row.height, row.width), bool))
            return {"human_masks": [empty] * n, "mask_coverage": [0.0] * n, "person_frac": 0.0, "mask_source": self.source}
        return _apply_per_row(batch, one, "masks", {"human_masks": [], "mask_coverage": [], "person_frac": 0.0, "mask_source": ""})


class NoScenes:
    """No scene label (scene_id -1, empty scene_probs): such shards cannot train the scene loss.
    Reads: error. Writes: scene_id, scene_probs, scene_source = "none"."""

    source = "none"

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        none = {"scene_id": -1, "scene_probs": [], "scene_source": self.source}
        return _apply_per_row(batch, lambda row: none, "scenes", {"scene_id": -1, "scene_probs": [], "scene_source": ""})


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


def make_finalize_fn(errors_dir: str) -> Callable[[pa.Table], pa.Table]:
    """Split a batch: error rows go to `errors_dir` (one Parquet file named by the batch's ids, so a
    retried task overwrites instead of duplicating), good rows are cast to SHARD_SCHEMA.

    Reads: every SHARD_SCHEMA column, error, error_code, error_stage. Writes: the shard columns only.
    """

    def finalize(batch: pa.Table) -> pa.Table:
        failed = np.asarray(batch.column("error").to_pylist(), dtype=object) != ""
        if failed.any():
            bad = batch.filter(pa.array(failed))
            errors = pa.table({"video_id": bad.column("video_id"), "source_path": bad.column("source_path"),
                               "stage": bad.column("error_stage"), "reason_code": bad.column("error_code"),
                               "reason": bad.column("error")}, schema=ERROR_SCHEMA)
            digest = hashlib.sha1("\n".join(sorted(errors.column("video_id").to_pylist())).encode()).hexdigest()[:16]
            Path(errors_dir).mkdir(parents=True, exist_ok=True)
            pq.write_table(errors, Path(errors_dir) / f"errors-{digest}.parquet")
        good = batch.filter(pa.array(~failed))
        columns = {"schema_version": pa.array([SCHEMA_VERSION] * good.num_rows, pa.int16())}
        for f in SHARD_SCHEMA:
            if f.name != "schema_version":
                columns[f.name] = good.column(f.name).cast(f.type)
        return pa.table(columns, schema=SHARD_SCHEMA)

    return finalize


def shard_files(shards_dir: str | Path) -> list[Path]:
    return sorted(Path(shards_dir).glob("*.parquet"))


def count_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def summarize_run(out: str | Path, rows_in: list[Row], timings_s: dict[str, float], config: dict) -> dict:
    """Merge the per-batch error files into OUT/errors.parquet and write OUT/summary.json."""
    out = Path(out)
    error_files = sorted((out / "_errors").glob("*.parquet"))
    errors = (pa.concat_tables([pq.read_table(f) for f in error_files]) if error_files
              else ERROR_SCHEMA.empty_table())
    pq.write_table(errors, out / "errors.parquet")
    shards = pq.read_table(shard_files(out / "shards"), columns=["split", "mask_source", "scene_source"]) \
        if shard_files(out / "shards") else None
    by_reason: dict[str, int] = {}
    for code in errors.column("reason_code").to_pylist():
        by_reason[code] = by_reason.get(code, 0) + 1
    summary = {
        "schema_version": SCHEMA_VERSION,
        "videos_in": len(rows_in),
        "videos_ok": shards.num_rows if shards is not None else 0,
        "videos_failed": errors.num_rows,
        "failures_by_reason": by_reason,
        "ok_by_split": pd.Series(shards.column("split").to_pylist()).value_counts().to_dict() if shards else {},
        "mask_source": sorted(set(shards.column("mask_source").to_pylist())) if shards else [],
        "scene_source": sorted(set(shards.column("scene_source").to_pylist())) if shards else [],
        "timings_s": {k: round(v, 2) for k, v in timings_s.items()},
        "config": config,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary

