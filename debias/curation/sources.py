"""Dataset sources: each reader turns a dataset's own published files into manifest rows.

Every reader returns `(rows, classes)`: one row per video with `video_id, label, label_id, split,
source_path, time_start, time_end, youtube_id` and the error columns, and the dataset's complete class
list in its official order (label_id indexes it; -1 = unlabelled). A malformed line becomes an
error row (stage `source`) naming the file and line, so it is counted instead of dropped; a missing or
unreadable annotation file fails the job before any work (it is a config mistake, not a bad video). A
missing video is not the reader's business: the decode stage reports it. Every path goes through
`debias.storage`, so `input.manifest`, `input.id_lists` and `input.root` may be URIs (s3://...).

Every row's video_id is unique: a row repeating a clip becomes a `duplicate_id` error row whose id
gets `#<n>` (its copy number), so that the summary counts it beside the clip it repeats.

Formats (as published):
- Kinetics-400/600/700 CSV: `label,youtube_id,time_start,time_end,split[,is_cc]`, or without `label`
  (the test lists: every row unlabelled); `input.manifest` is one CSV or a folder of them. A clip is a
  YouTube id and a window, `{youtube_id}_{start:06d}_{end:06d}` (integer seconds, the usual downloader
  naming), so the windows of one YouTube id (Kinetics-600/700 have ids in two windows, with different
  labels) are separate clips. Videos: `ROOT/{clip id}.mp4` (trimmed to the window) or
  `ROOT/{youtube_id}.mp4` (whole video, cut at decode). Classes: the sorted label names of the CSVs.
- Mini-Kinetics-200: `train_ytid_list.txt`, `val_ytid_list.txt` (one YouTube id a line; the split is
  the file name's prefix) joined on the YouTube id with a Kinetics CSV for labels and windows; an id
  with several windows there gives several clips, never one chosen silently: `ids_in_several_windows`
  lists them for the summary.
- UCF101: `classInd.txt`, `trainlist0N.txt` (`Class/v_X.avi 7`), `testlist0N.txt` (`Class/v_X.avi`).
- HMDB51: `<class>_test_split<N>.txt` with `<video> <0|1|2>` (1 train, 2 test, 0 not in this split).
- Diving48 V2: `Diving48_vocab.json` (48 entries, the classes) and `Diving48_V2_train.json` /
  `Diving48_V2_test.json`, lists of `{vid_name, label, start_frame, end_frame}`; `label` indexes the
  vocabulary; the released clips are already cut to that range, so the whole file is used.
- A plain folder `ROOT/<class>/<video file>` (all videos get split `input.split`).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from debias import storage
from debias.config import check

Row = dict

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv")
Source = Literal["auto", "folder", "kinetics", "minikinetics", "ucf101", "hmdb51", "diving48"]
NEEDS_ROOT = ("ucf101", "hmdb51", "diving48")  # their lists name files relative to the videos folder


@dataclass
class InputConfig:
    """Where the videos are and which dataset format describes them (formats: the module docstring)."""

    source: Source = "auto"  # auto: kinetics when input.manifest is set, else folder
    root: str = ""  # the videos; folder: ROOT/<class>/<video>; kinetics: default videos/ beside the manifest
    manifest: str = ""  # kinetics: CSV or folder of CSVs; ucf101/hmdb51: split files folder; diving48: JSON folder
    id_lists: list[str] = field(default_factory=list)  # minikinetics: train_ytid_list.txt, val_ytid_list.txt
    split_index: int = 1  # ucf101 / hmdb51: which official split (1-3)
    split: str = "train"  # folder: the split every video gets

    def __post_init__(self) -> None:
        check(1 <= self.split_index <= 3, "split_index", "must be 1, 2 or 3 (the official splits)")
        check(self.source not in ("kinetics", "minikinetics", *NEEDS_ROOT) or bool(self.manifest),
              "manifest", f"source={self.source} needs input.manifest")
        check(self.source not in NEEDS_ROOT or bool(self.root), "root",
              f"source={self.source} needs input.root (the videos folder its lists name files in)")
        check(self.source != "minikinetics" or bool(self.id_lists), "id_lists",
              "source=minikinetics needs input.id_lists (train_ytid_list.txt, val_ytid_list.txt)")

    def resolved_source(self) -> str:
        return self.source if self.source != "auto" else "kinetics" if self.manifest else "folder"

    def videos_dir(self) -> str:
        """`root`, else videos/ beside the manifest (inside it when the manifest is a folder of CSVs)."""
        if self.root:
            return storage.absolute(self.root)
        manifest = storage.absolute(self.manifest)
        return storage.join(manifest if storage.is_dir(manifest) else storage.parent(manifest), "videos")


def clip_id(youtube_id: str, time_start: float, time_end: float) -> str:
    """A Kinetics clip's id: `{youtube_id}_{start:06d}_{end:06d}` (integer seconds, the usual downloader
    naming, and the name of its trimmed file); a row without a window (time_end < 0) is the whole video."""
    return f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}" if time_end >= 0 else youtube_id


def _row(video_id: str, label: str, split: str, path: str, youtube_id: str = "",
         time_start: float = 0.0, time_end: float = -1.0) -> Row:
    return {"video_id": video_id, "label": label, "split": split, "source_path": path,
            "time_start": time_start, "time_end": time_end, "youtube_id": youtube_id,
            "error": "", "error_code": "", "error_stage": ""}


def source_error(row: Row, code: str, reason: str) -> Row:
    return {**row, "error": reason, "error_code": code, "error_stage": "source"}


def _require(path: str, key: str) -> str:
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} not found (input.{key})")
    return path


def _with_label_ids(rows: list[Row], classes: list[str]) -> list[Row]:
    index = {c: i for i, c in enumerate(classes)}
    for r in rows:
        r["label_id"] = index.get(r["label"], -1)
    return rows


def _mark_duplicates(rows: list[Row], where: list[str]) -> None:
    """A video id may appear once (shards and the summary are keyed by it): a later good row with the
    same id becomes a `duplicate_id` error row, and every repeat (error rows too) gets `#<n>` on its id,
    so that each input row is counted once. `where[i]` says where row i came from (file:line)."""
    first: dict[str, int] = {}
    copies: dict[str, int] = {}
    for i, r in enumerate(rows):
        vid = r["video_id"]
        if vid not in first:
            first[vid] = i
            continue
        copies[vid] = copies.get(vid, 1) + 1
        if not r["error"]:
            r = source_error(r, "duplicate_id", f"{where[i]}: video id {vid} appears more than once "
                                                f"(first at {where[first[vid]]})")
        rows[i] = {**r, "video_id": f"{vid}#{copies[vid]}"}


def _lines(path: str) -> list[str]:
    """A text file's lines (CRLF or LF; a UTF-8 byte-order mark dropped)."""
    return storage.read_text(path).lstrip("\ufeff").splitlines()


class VideoFolder:
    """The file names in a videos folder, listed once (a stat per video is slow on network storage)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.names = set(storage.list_dir(root))  # [] when it does not exist (yet: a download fills it)

    def locate(self, youtube_id: str, time_start: float, time_end: float) -> tuple[str, float, float]:
        """(path, window start, window end) of a Kinetics clip: a file trimmed to the window decodes
        from 0; a whole video decodes [time_start, time_end). Absent: the whole-video path (a download
        stage fills it, or the decode stage reports the missing file)."""
        trimmed = clip_id(youtube_id, time_start, time_end)
        for ext in (".mp4", ".mkv", ".webm"):
            if time_end >= 0 and trimmed + ext in self.names:
                return storage.join(self.root, trimmed + ext), 0.0, time_end - time_start
        for ext in (".mp4", ".mkv", ".webm"):
            if youtube_id + ext in self.names:
                return storage.join(self.root, youtube_id + ext), time_start, time_end
        return storage.join(self.root, f"{youtube_id}.mp4"), time_start, time_end


def _csv_files(manifest: str) -> list[str]:
    manifest = storage.absolute(_require(manifest, "manifest"))
    if not storage.is_dir(manifest):
        return [manifest]
    files = [storage.join(manifest, n) for n in storage.list_dir(manifest) if n.lower().endswith(".csv")]
    if not files:
        raise FileNotFoundError(f"no .csv files in {manifest} (input.manifest)")
    return files


def read_kinetics_rows(manifest: str, videos: VideoFolder) -> tuple[list[Row], list[str], list[str]]:
    """Rows of Kinetics CSVs (`[label,]youtube_id,time_start,time_end,split[,is_cc]`), where each came
    from (`file:line`), and the label names the CSVs hold. A CSV without a `label` column is unlabelled
    (a test list): its rows get label "". A malformed row's id is its `file:line`."""
    rows: list[Row] = []
    where: list[str] = []
    labels: set[str] = set()
    for path in _csv_files(manifest):
        reader = csv.DictReader(io.StringIO(storage.read_text(path).lstrip("\ufeff"), newline=""))
        columns = set(reader.fieldnames or [])
        missing = {"youtube_id", "split"} - columns
        if missing:
            raise ValueError(f"{path}: not a Kinetics CSV, lacks columns {sorted(missing)} (input.manifest)")
        labelled = "label" in columns
        for rec in reader:
            at = f"{path}:{reader.line_num}"  # the record's last line (a quoted field may span lines)
            ytid = (rec.get("youtube_id") or "").strip()
            label = (rec.get("label") or "").strip()
            labels.update([label] if label else [])
            row = _row(at, label, (rec.get("split") or "").strip(), "", youtube_id=ytid)
            try:
                start = float(rec.get("time_start") or 0.0)
                end = float(rec["time_end"]) if rec.get("time_end") else -1.0
                problem = ("no youtube_id" if not ytid else "no label (the CSV has a label column)"
                           if labelled and not label else "no split" if not row["split"]
                           else f"time_end {end} <= time_start {start}" if 0 <= end <= start else "")
            except ValueError as e:
                problem = f"bad time window ({e})"
            where.append(at)
            if problem:
                rows.append(source_error(row, "malformed_manifest_row", f"{at}: {problem}"))
                continue
            row["video_id"] = clip_id(ytid, start, end)
            row["source_path"], row["time_start"], row["time_end"] = videos.locate(ytid, start, end)
            rows.append(row)
    return rows, where, sorted(labels)


def read_kinetics(cfg: InputConfig) -> tuple[list[Row], list[str]]:
    rows, where, classes = read_kinetics_rows(cfg.manifest, VideoFolder(cfg.videos_dir()))
    _mark_duplicates(rows, where)
    return _with_label_ids(rows, classes), classes


def read_minikinetics(cfg: InputConfig) -> tuple[list[Row], list[str]]:
    """Mini-Kinetics-200: the published id lists joined on the YouTube id with the Kinetics CSV (labels
    and windows). An id missing from the CSV becomes an error row (`not_in_manifest`), never a silent
    drop; an id the CSV has in several windows becomes several clips (`ids_in_several_windows` lists
    them for the summary). Classes: the sorted labels of the clips the lists select."""
    kinetics, kinetics_where, _ = read_kinetics_rows(cfg.manifest, VideoFolder(cfg.videos_dir()))
    windows: dict[str, list[tuple[Row, str]]] = {}
    for r, csv_at in zip(kinetics, kinetics_where):
        if not r["error"]:
            windows.setdefault(r["youtube_id"], []).append((r, csv_at))
    rows: list[Row] = []
    where: list[str] = []
    for list_file in cfg.id_lists:
        split = storage.name(_require(list_file, "id_lists")).split("_ytid_list")[0]
        for line_no, line in enumerate(_lines(list_file), start=1):
            ytid = line.strip()
            if not ytid:
                continue
            at = f"{list_file}:{line_no}"
            matches = windows.get(ytid, [])
            if not matches:
                rows.append(source_error(_row(ytid, "", split, "", youtube_id=ytid), "not_in_manifest",
                                         f"{at}: id {ytid} is not in the Kinetics CSV {cfg.manifest}"))
                where.append(at)
            rows += [{**m, "split": split} for m, _ in matches]
            where += [f"{at} (CSV {csv_at})" for _, csv_at in matches]
    _mark_duplicates(rows, where)
    classes = sorted({r["label"] for r in rows if r["label"]})
    return _with_label_ids(rows, classes), classes


def ids_in_several_windows(rows: list[Row]) -> dict[str, list[str]]:
    """{youtube_id: [clip ids]} of the YouTube ids that are more than one good clip. Mini-Kinetics: the
    ids of its lists that matched several windows of the Kinetics CSV (all kept; the lists do not say
    which one they meant). Kinetics-600/700: the ids published in several windows."""
    clips: dict[str, set[str]] = {}
    for r in rows:
        if r.get("youtube_id") and not r["error"]:
            clips.setdefault(r["youtube_id"], set()).add(r["video_id"])
    return {ytid: sorted(ids) for ytid, ids in sorted(clips.items()) if len(ids) > 1}


def read_ucf101(cfg: InputConfig) -> tuple[list[Row], list[str]]:
    """UCF101 official split `split_index`: trainlist0N.txt (with 1-based class index) and testlist0N.txt;
    the classes are classInd.txt's, in its order."""
    splits_dir, root = storage.absolute(cfg.manifest), storage.absolute(cfg.root)
    class_ind = _require(storage.join(splits_dir, "classInd.txt"), "manifest")
    classes = [line.split()[1] for line in _lines(class_ind) if line.strip()]
    known = set(classes)
    rows: list[Row] = []
    where: list[str] = []
    for split, name in (("train", "trainlist"), ("test", "testlist")):
        list_file = _require(storage.join(splits_dir, f"{name}0{cfg.split_index}.txt"), "manifest")
        for line_no, line in enumerate(_lines(list_file), start=1):
            parts = line.split()
            if not parts:
                continue
            rel = parts[0]
            label = rel.split("/")[0] if "/" in rel else ""
            row = _row(rel.rsplit("/", 1)[-1].rsplit(".", 1)[0], label, split, storage.join(root, *rel.split("/")))
            problem = ("no <class>/ folder in the path" if not label
                       else f"class {label} not in classInd.txt" if label not in known else "")
            if not problem and len(parts) > 1:
                if not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
                    problem = f"bad class index {parts[1]!r}"
                elif classes[int(parts[1]) - 1] != label:
                    problem = f"class index {parts[1]} is {classes[int(parts[1]) - 1]}, folder says {label}"
            at = f"{list_file}:{line_no}"
            rows.append(source_error(row, "malformed_manifest_row", f"{at}: {problem}") if problem else row)
            where.append(at)
    _mark_duplicates(rows, where)
    return _with_label_ids(rows, classes), classes


HMDB_SPLIT_FILE = re.compile(r"^(?P<label>.+)_test_split(?P<n>[123])\.txt$")


def read_hmdb51(cfg: InputConfig) -> tuple[list[Row], list[str]]:
    """HMDB51 official split `split_index`: one `<class>_test_split<N>.txt` per class (the classes,
    sorted by name); 1 = train, 2 = test, 0 = left out of this split (not a video of this run, so no row)."""
    splits_dir, root = storage.absolute(_require(cfg.manifest, "manifest")), storage.absolute(cfg.root)
    names = [n for n in storage.list_dir(splits_dir)
             if (m := HMDB_SPLIT_FILE.match(n)) and m["n"] == str(cfg.split_index)]
    if not names:
        raise FileNotFoundError(f"no <class>_test_split{cfg.split_index}.txt files in {splits_dir} (input.manifest)")
    rows: list[Row] = []
    where: list[str] = []
    labels = [HMDB_SPLIT_FILE.match(n)["label"] for n in names]
    for label, name in zip(labels, names):
        list_file = storage.join(splits_dir, name)
        for line_no, line in enumerate(_lines(list_file), start=1):
            parts = line.split()
            if not parts:
                continue
            at = f"{list_file}:{line_no}"
            row = _row(parts[0].rsplit(".", 1)[0], label, "", storage.join(root, label, parts[0]))
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                rows.append(source_error(row, "malformed_manifest_row",
                                         f"{at}: expected '<video> <0|1|2>', got {line.strip()!r}"))
                where.append(at)
            elif parts[1] != "0":
                rows.append({**row, "split": "train" if parts[1] == "1" else "test"})
                where.append(at)
    _mark_duplicates(rows, where)
    classes = sorted(labels)  # by name, as the usual class index has them (file order puts climb_stairs first)
    return _with_label_ids(rows, classes), classes


def read_diving48(cfg: InputConfig) -> tuple[list[Row], list[str]]:
    """Diving48 V2: the classes are Diving48_vocab.json's 48 entries (each a [takeoff, somersaults,
    twists, flight position] list, named by joining them with `_`), in its order; a clip's `label` is
    its label_id (so a class no clip has, like V2's class 30, keeps its place)."""
    json_dir, root = storage.absolute(cfg.manifest), storage.absolute(cfg.root)
    vocab_file = _require(storage.join(json_dir, "Diving48_vocab.json"), "manifest")
    vocab = storage.read_json(vocab_file)
    if not isinstance(vocab, list) or not all(isinstance(v, list) and v for v in vocab):
        raise ValueError(f"{vocab_file}: expected a list of [takeoff, somersaults, twists, flight] lists (input.manifest)")
    classes = ["_".join(map(str, v)) for v in vocab]
    files = [f for f in (storage.join(json_dir, "Diving48_V2_train.json"), storage.join(json_dir, "Diving48_V2_test.json"))
             if storage.is_file(f)]
    if not files:
        raise FileNotFoundError(f"no Diving48_V2_train.json / Diving48_V2_test.json in {json_dir} (input.manifest)")
    rows: list[Row] = []
    where: list[str] = []
    for path in files:
        split = storage.name(path).rsplit("_", 1)[1].removesuffix(".json")
        for i, rec in enumerate(storage.read_json(path)):
            at = f"{path}[{i}]"
            name = str(rec.get("vid_name", "")) if isinstance(rec, dict) else ""
            row = _row(name or at, "", split, storage.join(root, f"{name}.mp4"))
            label = -1
            try:
                label, start, end = int(rec["label"]), int(rec["start_frame"]), int(rec["end_frame"])
                problem = ("no vid_name" if not name else f"label {label} not in 0-{len(classes) - 1} ({vocab_file})"
                           if not 0 <= label < len(classes) else f"end_frame {end} <= start_frame {start}" if end <= start else "")
            except (KeyError, TypeError, ValueError) as e:
                problem = f"bad or missing field ({type(e).__name__}: {e})"
            row["label"] = classes[label] if 0 <= label < len(classes) else ""
            rows.append(source_error(row, "malformed_manifest_row", f"{at}: {problem}") if problem else row)
            where.append(at)
    _mark_duplicates(rows, where)
    return _with_label_ids(rows, classes), classes


def _below(root: str, path: str) -> str:
    """`path` relative to `root`, `/`-separated. Compared without scheme and leading `/`: an fsspec
    filesystem lists `memory://x/a` as `memory:///x/a`."""
    def bare(p: str) -> str:
        return p.split("://", 1)[1].lstrip("/") if storage.is_uri(p) else p

    prefix = bare(root).rstrip("/") + "/"
    if not bare(path).startswith(prefix):
        raise ValueError(f"{path} was listed below {root} but is not inside it (input.root)")
    return bare(path)[len(prefix):]


def read_folder(cfg: InputConfig) -> tuple[list[Row], list[str]]:
    """ROOT/<class>/<video file>: the class is the folder name, the id `<class>/<file stem>`. Files
    that are not videos by extension, hidden ones and deeper levels are ignored; videos directly in
    ROOT are error rows (no class)."""
    if not cfg.root or not storage.is_dir(cfg.root):
        raise FileNotFoundError(f"videos folder not found: '{cfg.root}' (input.root, or the ROOT argument)")
    root = storage.absolute(cfg.root)
    rows: list[Row] = []
    for path in storage.find_files(root):
        parts = _below(root, path).split("/")
        stem, ext = (parts[-1].rsplit(".", 1) + [""])[:2]
        if len(parts) > 2 or any(p.startswith(".") for p in parts) or f".{ext.lower()}" not in VIDEO_EXTENSIONS:
            continue
        if len(parts) == 1:
            rows.append(source_error(_row(stem, "", cfg.split, path), "no_class_folder",
                                     f"{path}: a video directly in ROOT has no class; put it in ROOT/<class>/"))
        else:
            rows.append(_row(f"{parts[0]}/{stem}", parts[0], cfg.split, path))
    if not rows:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in {root}/<class>/ (input.root)")
    _mark_duplicates(rows, [r["source_path"] for r in rows])
    classes = sorted({r["label"] for r in rows if not r["error"]})
    return _with_label_ids(rows, classes), classes


def read_source(cfg: InputConfig) -> tuple[list[Row], list[str]]:
    """Manifest rows and class names of the configured source."""
    source = cfg.resolved_source()
    if source == "kinetics":
        return read_kinetics(cfg)
    if source == "minikinetics":
        return read_minikinetics(cfg)
    if source == "ucf101":
        return read_ucf101(cfg)
    if source == "hmdb51":
        return read_hmdb51(cfg)
    if source == "diving48":
        return read_diving48(cfg)
    return read_folder(cfg)


# --- per-video ground truth (the synthetic benchmark's annotations/ folder) ---------------------------

def read_annotation(annotations_dir: str, name: str) -> tuple[np.ndarray, int]:
    """Ground truth of one video, ANNOTATIONS/<name>.npz (name: the manifest's id): (T, H, W) bool masks at
    render resolution and the scene id. `annotations_dir` may be a URI."""
    path = storage.join(annotations_dir, f"{name}.npz")
    with np.load(io.BytesIO(storage.read_bytes(path))) as data:
        h, w = (int(v) for v in data["frame_size"])
        masks = np.unpackbits(data["masks"], axis=-1, count=w).astype(bool)
        return masks.reshape(-1, h, w), int(data["scene_id"])


def read_annotated_scene_names(annotations_dir: str) -> list[str]:
    """The dataset's scene names, ANNOTATIONS/scenes.json (index = scene id)."""
    names_file = storage.join(annotations_dir, "scenes.json")
    if not storage.is_file(names_file):
        raise FileNotFoundError(f"scene names not found: {names_file} (labels.annotations_dir)")
    return storage.read_json(names_file)
