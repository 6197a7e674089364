"""Dataset sources: each reader turns a dataset's own published files into manifest rows.

Every reader returns `(rows, classes)`: one row per video with `video_id, label, label_id, split,
source_path, time_start, time_end, youtube_id` and the error columns, and the class names (label_id
indexes them; the dataset's own order where it publishes one). A malformed line becomes an error row
(stage `source`) naming the file and line, so it is counted instead of dropped; a missing or
unreadable annotation file fails the job before any work (it is a config mistake, not a bad video).

Formats (as published):
- Kinetics-400/600/700 CSV: `label,youtube_id,time_start,time_end,split[,is_cc]`; `input.manifest` is
  one CSV or a folder of them (train.csv, validate.csv, ...). Videos: `ROOT/{id}_{start:06d}_{end:06d}.mp4`
  (trimmed to the window, the usual downloader naming) or `ROOT/{id}.mp4` (whole video, cut at decode).
- Mini-Kinetics-200: `train_ytid_list.txt`, `val_ytid_list.txt` (one YouTube id a line; the split is
  the file name's prefix) joined with a Kinetics CSV for labels and windows.
- UCF101: `classInd.txt`, `trainlist0N.txt` (`Class/v_X.avi 7`), `testlist0N.txt` (`Class/v_X.avi`).
- HMDB51: `<class>_test_split<N>.txt` with `<video> <0|1|2>` (1 train, 2 test, 0 not in this split).
- Diving48 V2: `Diving48_V2_train.json` / `Diving48_V2_test.json`, lists of `{vid_name, label,
  start_frame, end_frame}`; the released clips are already cut to that range, so the whole file is used.
- A plain folder `ROOT/<class>/<video file>` (all videos get split `input.split`).
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from debias.config import check

Row = dict

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv")
Source = Literal["auto", "folder", "kinetics", "minikinetics", "ucf101", "hmdb51", "diving48"]


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
        check(self.source not in ("kinetics", "minikinetics", "ucf101", "hmdb51", "diving48") or bool(self.manifest),
              "manifest", f"source={self.source} needs input.manifest")
        check(self.source != "minikinetics" or bool(self.id_lists), "id_lists",
              "source=minikinetics needs input.id_lists (train_ytid_list.txt, val_ytid_list.txt)")

    def resolved_source(self) -> str:
        return self.source if self.source != "auto" else "kinetics" if self.manifest else "folder"

    def videos_dir(self) -> Path:
        """`root`, else videos/ beside the manifest (inside it when the manifest is a folder of CSVs)."""
        if self.root:
            return Path(self.root)
        manifest = Path(self.manifest)
        return (manifest if manifest.is_dir() else manifest.parent) / "videos"


def _row(video_id: str, label: str, split: str, path: Path | str, youtube_id: str = "",
         time_start: float = 0.0, time_end: float = -1.0) -> Row:
    return {"video_id": video_id, "label": label, "split": split, "source_path": str(path),
            "time_start": time_start, "time_end": time_end, "youtube_id": youtube_id,
            "error": "", "error_code": "", "error_stage": ""}


def source_error(row: Row, code: str, reason: str) -> Row:
    return {**row, "error": reason, "error_code": code, "error_stage": "source"}


def _require(path: Path, key: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (input.{key})")
    return path


def _with_label_ids(rows: list[Row], classes: list[str]) -> tuple[list[Row], list[str]]:
    index = {c: i for i, c in enumerate(classes)}
    for r in rows:
        r["label_id"] = index.get(r["label"], -1)
    return rows, classes


def _mark_duplicates(rows: list[Row]) -> None:
    """A video id may appear once (shards are keyed by it); later copies become error rows."""
    seen: set[str] = set()
    for i, r in enumerate(rows):
        if not r["error"] and r["video_id"] in seen:
            rows[i] = source_error(r, "duplicate_id", f"video id {r['video_id']} appears more than once")
        seen.add(r["video_id"])


class VideoFolder:
    """The file names in a videos folder, listed once (a stat per video is slow on network storage)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names = set(os.listdir(root)) if root.is_dir() else set()

    def locate(self, youtube_id: str, time_start: float, time_end: float) -> tuple[str, float, float]:
        """(path, window start, window end) of a Kinetics video: a file trimmed to the window decodes
        from 0; a whole video decodes [time_start, time_end). Absent: the whole-video path (a download
        stage fills it, or the decode stage reports the missing file)."""
        trimmed = f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}"
        for ext in (".mp4", ".mkv", ".webm"):
            if trimmed + ext in self.names:
                return str(self.root / (trimmed + ext)), 0.0, (time_end - time_start if time_end >= 0 else -1.0)
        for ext in (".mp4", ".mkv", ".webm"):
            if youtube_id + ext in self.names:
                return str(self.root / (youtube_id + ext)), time_start, time_end
        return str(self.root / f"{youtube_id}.mp4"), time_start, time_end


def _csv_files(manifest: Path) -> list[Path]:
    files = sorted(manifest.glob("*.csv")) if manifest.is_dir() else [manifest]
    if not files:
        raise FileNotFoundError(f"no .csv files in {manifest} (input.manifest)")
    return files


def read_kinetics_rows(manifest: Path, videos: VideoFolder) -> list[Row]:
    """Rows of Kinetics CSVs (`label,youtube_id,time_start,time_end,split[,is_cc]`)."""
    rows: list[Row] = []
    for path in _csv_files(_require(manifest, "manifest")):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"label", "youtube_id", "split"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path}: not a Kinetics CSV, lacks columns {sorted(missing)} (input.manifest)")
            for line_no, rec in enumerate(reader, start=2):
                ytid = (rec.get("youtube_id") or "").strip()
                row = _row(ytid or f"{path.name}:{line_no}", (rec.get("label") or "").strip(),
                           (rec.get("split") or "").strip(), videos.root / f"{ytid}.mp4", youtube_id=ytid)
                try:
                    start = float(rec.get("time_start") or 0.0)
                    end = float(rec["time_end"]) if rec.get("time_end") else -1.0
                    problem = ("no youtube_id" if not ytid else "no label" if not row["label"]
                               else "no split" if not row["split"]
                               else f"time_end {end} <= time_start {start}" if 0 <= end <= start else "")
                except ValueError as e:
                    problem = f"bad time window ({e})"
                if problem:
                    rows.append(source_error(row, "malformed_manifest_row", f"{path}:{line_no}: {problem}"))
                    continue
                row["source_path"], row["time_start"], row["time_end"] = videos.locate(ytid, start, end)
                rows.append(row)
    return rows


def read_kinetics(cfg: InputConfig) -> tuple[list[Row], list[str]]:
    rows = read_kinetics_rows(Path(cfg.manifest), VideoFolder(cfg.videos_dir()))
    _mark_duplicates(rows)
    return _with_label_ids(rows, sorted({r["label"] for r in rows if not r["error"]}))


def read_minikinetics(cfg: InputConfig) -> tuple[list[Row], list[str]]:
    """Mini-Kinetics-200: the published id lists, labels and windows joined from the Kinetics CSV.
    An id missing from the CSV becomes an error row (`not_in_manifest`), never a silent drop."""
    by_id = {r["youtube_id"]: r for r in read_kinetics_rows(Path(cfg.manifest), VideoFolder(cfg.videos_dir()))
             if not r["error"]}
    rows: list[Row] = []
    for list_file in map(Path, cfg.id_lists):
        split = _require(list_file, "id_lists").name.split("_ytid_list")[0]
        for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
            ytid = line.strip()
            if not ytid:
                continue
            if ytid not in by_id:
                rows.append(source_error(_row(ytid, "", split, "", youtube_id=ytid), "not_in_manifest",
                                         f"{list_file}:{line_no}: id {ytid} is not in the Kinetics CSV {cfg.manifest}"))
                continue
            rows.append({**by_id[ytid], "split": split})
    _mark_duplicates(rows)
    return _with_label_ids(rows, sorted({r["label"] for r in rows if not r["error"]}))


def read_ucf101(cfg: InputConfig) -> tuple[list[Row], list[str]]:
    """UCF101 official split `split_index`: trainlist0N.txt (with 1-based class index) and testlist0N.txt."""
    splits_dir, root = Path(cfg.manifest), Path(cfg.root)
    class_ind = _require(splits_dir / "classInd.txt", "manifest")
    classes = [line.split()[1] for line in class_ind.read_text().splitlines() if line.strip()]
    known = set(classes)
    rows: list[Row] = []
    for split, name in (("train", "trainlist"), ("test", "testlist")):
        list_file = _require(splits_dir / f"{name}0{cfg.split_index}.txt", "manifest")
        for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            rel = parts[0]
            label = rel.split("/")[0] if "/" in rel else ""
            row = _row(Path(rel).stem, label, split, root / rel)
            problem = ("no <class>/ folder in the path" if not label
                       else f"class {label} not in {class_ind.name}" if label not in known else "")
            if not problem and len(parts) > 1:
                if not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
                    problem = f"bad class index {parts[1]!r}"
                elif classes[int(parts[1]) - 1] != label:
                    problem = f"class index {parts[1]} is {classes[int(parts[1]) - 1]}, folder says {label}"
            rows.append(source_error(row, "malformed_manifest_row", f"{list_file}:{line_no}: {problem}") if problem else row)
    _mark_duplicates(rows)
    return _with_label_ids(rows, classes)


HMDB_SPLIT_FILE = re.compile(r"^(?P<label>.+)_test_split(?P<n>[123])\.txt$")


def read_hmdb51(cfg: InputConfig) -> tuple[list[Row], list[str]]:
    """HMDB51 official split `split_index`: one `<class>_test_split<N>.txt` per class; 1 = train,
    2 = test, 0 = left out of this split (not a video of this run, so no row)."""
    splits_dir, root = _require(Path(cfg.manifest), "manifest"), Path(cfg.root)
    files = sorted(p for p in splits_dir.iterdir() if (m := HMDB_SPLIT_FILE.match(p.name)) and m["n"] == str(cfg.split_index))
    if not files:
        raise FileNotFoundError(f"no <class>_test_split{cfg.split_index}.txt files in {splits_dir} (input.manifest)")
    rows: list[Row] = []
    classes = []
    for list_file in files:
        label = HMDB_SPLIT_FILE.match(list_file.name)["label"]
        classes.append(label)
        for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            row = _row(Path(parts[0]).stem, label, "", root / label / parts[0])
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                rows.append(source_error(row, "malformed_manifest_row",
                                         f"{list_file}:{line_no}: expected '<video> <0|1|2>', got {line.strip()!r}"))
            elif parts[1] != "0":
                rows.append({**row, "split": "train" if parts[1] == "1" else "test"})
    _mark_duplicates(rows)
    return _with_label_ids(rows, classes)


def read_diving48(cfg: InputConfig) -> tuple[list[Row], list[str]]:
    """Diving48 V2: Diving48_V2_{train,test}.json; labels 0-47 become names '00'-'47' (so that the
    sorted class list keeps the official ids)."""
    json_dir, root = Path(cfg.manifest), Path(cfg.root)
    files = [f for f in (json_dir / "Diving48_V2_train.json", json_dir / "Diving48_V2_test.json") if f.is_file()]
    if not files:
        raise FileNotFoundError(f"no Diving48_V2_train.json / Diving48_V2_test.json in {json_dir} (input.manifest)")
    rows: list[Row] = []
    for path in files:
        split = path.stem.rsplit("_", 1)[1]
        try:
            entries = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}) (input.manifest)") from None
        for i, rec in enumerate(entries):
            name = str(rec.get("vid_name", "")) if isinstance(rec, dict) else ""
            row = _row(name or f"{path.name}[{i}]", "", split, root / f"{name}.mp4")
            try:
                label, start, end = int(rec["label"]), int(rec["start_frame"]), int(rec["end_frame"])
                problem = ("no vid_name" if not name else f"label {label} not in 0-47" if not 0 <= label < 48
                           else f"end_frame {end} <= start_frame {start}" if end <= start else "")
            except (KeyError, TypeError, ValueError) as e:
                problem, label = f"bad or missing field ({type(e).__name__}: {e})", -1
            row["label"] = f"{label:02d}" if label >= 0 else ""
            rows.append(source_error(row, "malformed_manifest_row", f"{path}[{i}]: {problem}") if problem else row)
    _mark_duplicates(rows)
    return _with_label_ids(rows, sorted({r["label"] for r in rows if not r["error"]}))


def read_folder(cfg: InputConfig) -> tuple[list[Row], list[str]]:
    """ROOT/<class>/<video file>: the class is the folder name, the id `<class>/<file stem>`. Files
    that are not videos by extension are ignored; videos directly in ROOT are error rows (no class)."""
    root = Path(cfg.root)
    if not cfg.root or not root.is_dir():
        raise FileNotFoundError(f"videos folder not found: '{cfg.root}' (input.root, or the ROOT argument)")
    rows: list[Row] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in VIDEO_EXTENSIONS:
            rows.append(source_error(_row(entry.stem, "", cfg.split, entry), "no_class_folder",
                                     f"{entry}: a video directly in ROOT has no class; put it in ROOT/<class>/"))
        elif entry.is_dir():
            for video in sorted(entry.iterdir()):
                if video.is_file() and video.suffix.lower() in VIDEO_EXTENSIONS and not video.name.startswith("."):
                    rows.append(_row(f"{entry.name}/{video.stem}", entry.name, cfg.split, video))
    _mark_duplicates(rows)
    if not rows:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in {root}/<class>/ (input.root)")
    return _with_label_ids(rows, sorted({r["label"] for r in rows if not r["error"]}))


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
