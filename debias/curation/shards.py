"""The curated data: the one module that knows what `debias preprocess` hands to training and evaluation.

It owns the shard schema (one Parquet row per video, or per clip), the error table and the error columns
a row carries through the curation steps, and where a run's files live on any storage (a local path or a
URI, through `debias.storage`); the frames' and masks' encodings are `debias.curation.codecs`:

    OUT/_committed.json              the commit record: which run readers see (written last, one PUT)
    OUT/runs/<run>/shards/<attempt>/*.parquet   the shards (each attempt of the run writes its own folder)
    OUT/runs/<run>/errors.parquet    the error table: one row per failed video (or clip)
    OUT/runs/<run>/classes.json      class names, index = label_id
    OUT/runs/<run>/scenes.json       what each scene_id means
    OUT/runs/<run>/summary.json      counts by outcome and reason, timings, the config
    OUT/runs/<run>/run.json          the run's row digest (the config and inputs that decide its rows)

An object store has no atomic rename, so a run is published by writing everything under its own id and
the commit record last; readers go through the record only, so they see the old run or the new one,
whole, never a part. Old runs are deleted after the commit. A run killed before its commit is resumed by
the next run of the same row digest: its complete shard and error files are kept and their videos are
not curated again (`start_attempt`).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from debias import storage

Row = dict[str, Any]

SCHEMA_VERSION = 2  # 2: clip_index, padded; frame_indices count from the window's start


def _f(name: str, type_: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, type_, nullable=False, metadata={"doc": doc})


SHARD_SCHEMA = pa.schema([
    _f("schema_version", pa.int16(), "version of this schema (bumped on any change)"),
    _f("video_id", pa.string(), "id from the manifest (YouTube id for Kinetics, <class>/<stem> for a folder)"),
    _f("clip_index", pa.int32(), "clip of the video (0; 0..N-1 with decode.sampling=clips): (video_id, clip_index) is unique"),
    _f("label", pa.string(), "action class name"),
    _f("label_id", pa.int32(), "index of `label` in OUT/classes.json"),
    _f("split", pa.string(), "split from the manifest (train, val, ood_val, ood_test, test, ...)"),
    _f("source_path", pa.string(), "the video file the row was decoded from"),
    _f("fps", pa.float32(), "native frame rate of the source video"),
    _f("frame_indices", pa.list_(pa.int32()), "index of each stored frame among the decoded frames of the video's time window"),
    _f("padded", pa.bool_(), "the video was shorter than the clip: its last frame is repeated (decode.sampling=seed)"),
    _f("height", pa.int32(), "stored frame height in pixels"),
    _f("width", pa.int32(), "stored frame width in pixels"),
    _f("frames", pa.list_(pa.binary()), "JPEG bytes per stored frame (RGB)"),
    _f("human_masks", pa.list_(pa.binary()), "per frame: np.packbits of the (height, width) bool person mask"),
    _f("mask_coverage", pa.list_(pa.float32()), "per frame: share of pixels masked as person"),
    _f("person_frac", pa.float32(), "share of frames with any person pixel (the paper keeps >= 0.7)"),
    _f("mask_source", pa.string(), "provider of the masks: sam (detector + SAM), motion (weight-free), annotations, none"),
    _f("scene_id", pa.int32(), "hard scene label (labels.scene_hard: argmax of scene_probs or per-frame majority vote; cluster; annotation); -1 = none"),
    _f("scene_probs", pa.list_(pa.float32()), "soft scene label: distribution over scene classes (places365: mean over frames of the 365 probabilities)"),
    _f("scene_source", pa.string(), "provider of the scene labels: places365, clusters (weight-free, K classes), annotations, none"),
])


def shard_schema_markdown() -> str:
    """The schema as a markdown table (the README holds a copy; a test keeps them equal)."""
    lines = ["| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{f.name}` | `{f.type}` | {f.metadata[b'doc'].decode()} |" for f in SHARD_SCHEMA]
    return "\n".join(lines)


# --- the error columns: carried by every row through the steps, and the error table -------------------

# A row in flight carries these; "" everywhere = no error. The error table stores them under the same
# names, so a reader of errors.parquet meets the words the code uses.
ERROR_COLUMNS = ["error", "error_code", "error_stage"]  # readable reason naming the file; short category; step
NO_ERROR: Row = dict.fromkeys(ERROR_COLUMNS, "")

ERROR_SCHEMA = pa.schema([
    pa.field("video_id", pa.string()),
    pa.field("clip_index", pa.int32()),  # the clip that failed (0 for a video that failed before decoding)
    pa.field("source_path", pa.string()),
    pa.field("error_stage", pa.string()),  # which step rejected it: source, download, decode, masks, scenes
    pa.field("error_code", pa.string()),  # short category, counted in summary.json
    pa.field("error", pa.string()),  # readable message naming the file
])
# Failures at these steps are one row for the whole video (they happen before a video becomes clips).
VIDEO_STAGES = ("source", "download", "decode")


def error_fields(stage: str, code: str, reason: str) -> list[str]:
    """The values of ERROR_COLUMNS, in order, for a failure (for a pandas step's `errors.iloc[i] = ...`)."""
    return [reason, code, stage]


def failed(row: Row, stage: str, code: str, reason: str) -> Row:
    """`row` marked as failed at `stage`; later steps pass it through and finalize files it."""
    return {**row, **dict(zip(ERROR_COLUMNS, error_fields(stage, code, reason)))}


def error_table(batch: pa.Table) -> pa.Table:
    """The failed rows of a batch as ERROR_SCHEMA rows. Reads: video_id, clip_index (when present),
    source_path, error, error_code, error_stage."""
    bad = batch.filter(pa.array(np.asarray(batch.column("error").to_pylist(), dtype=object) != ""))
    clip = bad.column("clip_index") if "clip_index" in bad.column_names else pa.array([0] * bad.num_rows)
    columns = {"video_id": bad.column("video_id"), "clip_index": clip, "source_path": bad.column("source_path"),
               **{c: bad.column(c) for c in ERROR_COLUMNS}}
    return pa.table({f.name: columns[f.name].cast(f.type) for f in ERROR_SCHEMA}, schema=ERROR_SCHEMA)


def shard_table(batch: pa.Table) -> pa.Table:
    """The good rows of a batch cast to SHARD_SCHEMA (every other column dropped)."""
    good = batch.filter(pa.array(np.asarray(batch.column("error").to_pylist(), dtype=object) == ""))
    columns = {"schema_version": pa.array([SCHEMA_VERSION] * good.num_rows, pa.int16())}
    columns |= {f.name: good.column(f.name).cast(f.type) for f in SHARD_SCHEMA if f.name != "schema_version"}
    return pa.table(columns, schema=SHARD_SCHEMA)


# --- Parquet files on any storage -------------------------------------------------------------------

def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    with storage.open_input(path) as f:
        return pq.read_table(f, columns=columns)


def write_parquet(path: str, table: pa.Table) -> None:
    """One whole Parquet file, atomic (storage.write_bytes: tmp + rename locally, one PUT on a store)."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(path, buf.getvalue())


# --- readers: only the committed run -----------------------------------------------------------------

COMMIT_FILE = "_committed.json"


def _commit(out: str) -> dict:
    out = storage.absolute(out)
    record = storage.join(out, COMMIT_FILE)
    if not storage.is_file(record):
        hint = " (its shards/ predate commit records: curate again)" if storage.is_dir(storage.join(out, "shards")) else ""
        raise FileNotFoundError(f"no curated data in {out}: no committed run ({COMMIT_FILE}){hint}; "
                                f"run `debias preprocess ... --out {out}` first")
    return storage.read_json(record)


def _run_file(out: str, commit: dict, name: str) -> str:
    return storage.join(storage.absolute(out), "runs", commit["run_id"], name)


def committed_run(out: str) -> str:
    """The id of the run readers of OUT see."""
    return _commit(out)["run_id"]


def shard_files(out: str) -> list[str]:
    """The committed run's Parquet files (paths, or URIs for a URI OUT), sorted."""
    commit = _commit(out)
    return [storage.join(storage.absolute(out), rel) for rel in commit["shards"]]


def read_classes(out: str) -> list[str]:
    """Every class of the dataset in its official order: index = label_id."""
    return storage.read_json(_run_file(out, _commit(out), "classes.json"))


def read_scene_names(out: str) -> list[str]:
    """What each scene_id means (Places365 categories, cluster numbers, annotated scenes); [] without scenes."""
    return storage.read_json(_run_file(out, _commit(out), "scenes.json"))


def num_scenes(out: str) -> int:
    """The scene classes of the committed run (the length of scene_probs; 0 without scene labels)."""
    return int(_commit(out)["num_scenes"])


def read_summary(out: str) -> dict:
    return storage.read_json(_run_file(out, _commit(out), "summary.json"))


def summary_digest(out: str) -> str:
    """sha256 of the committed summary.json: names exactly which curated data a model was trained on."""
    return _commit(out)["summary_sha256"]


def read_errors(out: str) -> pa.Table:
    """The committed run's error table (ERROR_SCHEMA): one row per failed video, or per failed clip."""
    return read_parquet(_run_file(out, _commit(out), "errors.parquet"))


# --- writing a run: attempts, resuming, committing -----------------------------------------------------

def row_digest(config: dict, rows: list[Row], classes: list[str]) -> str:
    """sha256 over what decides a run's rows: the row-affecting config and the input list (ids, labels,
    paths, windows, source errors, in read order) with its classes. Two runs with the same digest
    produce the same rows, so one may take over what the other wrote."""
    blob = json.dumps({"config": config, "rows": rows, "classes": classes}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Attempt:
    """One try at a run: where its workers write. Plain strings, so it travels to Ray workers."""

    out: str
    run_id: str
    attempt_id: str

    @property
    def run_dir(self) -> str:
        return storage.join(self.out, "runs", self.run_id)

    def folder(self, kind: str) -> str:
        """This attempt's folder for `kind` in shards, errors (per-batch error parts), stats (task times)."""
        return storage.join(self.run_dir, kind, self.attempt_id)


@dataclass
class Resumed:
    """What an attempt takes over from the killed attempts of its run."""

    video_ids: set[str] = field(default_factory=set)
    shard_files: list[str] = field(default_factory=list)  # complete shard files of earlier attempts
    error_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was dropped or redone, for the log


def _runs(out: str) -> list[str]:
    return storage.list_dir(storage.join(out, "runs"))


def find_unfinished_run(out: str, digest: str) -> str | None:
    """The uncommitted run of OUT with this row digest, if a killed attempt left one. Reads only."""
    out = storage.absolute(out)
    committed = _commit(out)["run_id"] if storage.is_file(storage.join(out, COMMIT_FILE)) else None
    for run_id in _runs(out):
        record = storage.join(out, "runs", run_id, "run.json")
        if run_id != committed and storage.is_file(record) and storage.read_json(record)["row_digest"] == digest:
            return run_id
    return None


def _finished(out: str, run_id: str) -> bool:
    """A run that got as far as its summary (committed now, or replaced by a later commit)."""
    return storage.is_file(storage.join(out, "runs", run_id, "summary.json"))


def other_unfinished_runs(out: str, run_id: str | None) -> list[str]:
    """Killed runs of OUT other than `run_id`: their config or inputs differ. They are kept (a run of their
    config resumes them) until deleted by hand."""
    out = storage.absolute(out)
    return [r for r in _runs(out) if r != run_id and not _finished(out, r)]


def _ids(path: str, columns: list[str]) -> pa.Table | None:
    """The key columns of a part, or None when it cannot be read (a file cut short by a kill)."""
    try:
        return read_parquet(path, columns)
    except (OSError, pa.ArrowInvalid):
        return None


def start_attempt(out: str, digest: str, run_id: str | None, rows_per_video: int) -> tuple[Attempt, Resumed]:
    """Open a new attempt of run `run_id` (an unfinished run of this digest: resume it) or of a new run.

    Resuming keeps the complete files of the earlier attempts. A video is taken over when they hold all
    of it: `rows_per_video` rows (good clips and failed clips together), or one failure before it became
    clips (source, decode). A video failed at download is tried again (the download pass knows which
    failures are final). Any other video found there (half of its clips, or written twice by a worker
    that outlived its driver) is cut out of those files and curated again; a file cut short is deleted.
    """
    out = storage.absolute(out)
    attempt_id = uuid.uuid4().hex[:8]
    # a new run: when, which rows, and the attempt (two runs of one config in one second stay apart)
    attempt = Attempt(out, run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{digest[:8]}-{attempt_id[:4]}", attempt_id)
    resumed = Resumed()
    if run_id is None:
        storage.write_json(storage.join(attempt.run_dir, "run.json"), {"row_digest": digest})
        return attempt, resumed
    shard_keys, error_keys = {}, {}
    for kind, keys, columns in (("shards", shard_keys, ["video_id", "clip_index"]),
                                ("errors", error_keys, ["video_id", "clip_index", "error_stage"])):
        for path in storage.find_files(storage.join(attempt.run_dir, kind), ".parquet"):
            table = _ids(path, columns)
            if table is None:
                storage.delete(path)
                resumed.notes.append(f"deleted {path}: cut short (its writer was killed)")
            else:
                keys[path] = table.to_pylist()
    rows_of: Counter[str] = Counter()
    clips_of: dict[str, set[int]] = {}
    whole_failure: set[str] = set()
    retry: set[str] = set()
    for keys in (shard_keys, error_keys):
        for rows in keys.values():
            for r in rows:
                rows_of[r["video_id"]] += 1
                clips_of.setdefault(r["video_id"], set()).add(r["clip_index"])
                if r.get("error_stage") == "download":
                    retry.add(r["video_id"])
                elif r.get("error_stage") in VIDEO_STAGES:
                    whole_failure.add(r["video_id"])
    for video_id, n in rows_of.items():
        complete = (video_id in whole_failure and n == 1) or (n == rows_per_video == len(clips_of[video_id]))
        if complete and video_id not in retry:
            resumed.video_ids.add(video_id)
    for keys, kept in ((shard_keys, resumed.shard_files), (error_keys, resumed.error_files)):
        for path, rows in keys.items():
            drop = {r["video_id"] for r in rows} - resumed.video_ids
            if drop:
                table = read_parquet(path)
                table = table.filter(pa.array([v not in drop for v in table.column("video_id").to_pylist()]))
                resumed.notes.append(f"{len(drop)} videos of {storage.name(path)} to curate again (incomplete there)")
                if table.num_rows == 0:
                    storage.delete(path)
                    continue
                write_parquet(path, table)
            kept.append(path)
    return attempt, resumed


def _relative(out: str, path: str) -> str:
    return path[len(storage.absolute(out)):].lstrip("/")


def commit(attempt: Attempt, resumed: Resumed, errors: pa.Table, classes: list[str], scene_names: list[str],
           summary: dict) -> None:
    """Publish the run: its error table, classes, scene names and summary next to its shards, then the
    commit record (the moment readers switch), then delete the runs it replaces and this run's parts.
    Killed runs of other rows stay (`other_unfinished_runs`)."""
    run_dir, out = attempt.run_dir, attempt.out
    files = sorted(resumed.shard_files + storage.find_files(attempt.folder("shards"), ".parquet"))
    write_parquet(storage.join(run_dir, "errors.parquet"), errors)
    storage.write_json(storage.join(run_dir, "classes.json"), classes)
    storage.write_json(storage.join(run_dir, "scenes.json"), scene_names)
    summary_bytes = json.dumps(summary, indent=1).encode()
    storage.write_bytes(storage.join(run_dir, "summary.json"), summary_bytes)
    storage.write_json(storage.join(out, COMMIT_FILE), {
        "run_id": attempt.run_id, "shards": [_relative(out, f) for f in files], "num_classes": len(classes),
        "num_scenes": len(scene_names), "summary_sha256": hashlib.sha256(summary_bytes).hexdigest(),
        "committed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    for run_id in _runs(out):
        if run_id != attempt.run_id and _finished(out, run_id):
            storage.delete(storage.join(out, "runs", run_id))
    keep = set(files)
    for path in storage.find_files(storage.join(run_dir, "shards")):
        if path not in keep:  # written by a dead attempt's worker after this attempt looked
            storage.delete(path)
    storage.delete(storage.join(run_dir, "errors"))
    storage.delete(storage.join(run_dir, "stats"))
