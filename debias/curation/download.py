"""Download stage: Kinetics clip rows -> local video files with yt-dlp, and a status table that persists.

A clip is a YouTube id and a window (its id `{youtube_id}_{start:06d}_{end:06d}`, `debias.curation.sources.clip_id`).
Only the window is fetched where possible (yt-dlp's section download, which needs an ffmpeg binary:
`download.ffmpeg`, else `ffmpeg` on PATH, else the one the imageio-ffmpeg package ships), into
`{clip id}.{ext}`: two windows of one YouTube id are two files. Without ffmpeg, or when a cut fails (a
URL that cannot be seeked), the whole video is fetched into `{youtube_id}.{ext}` and the decode stage
cuts each window from it (one whole file serves every window of its video). Files are first written
under `.incoming/` (named by clip, so two windows never share a partial file) and renamed when
complete, so a killed run never leaves a half file under a final name.

Every attempt's outcome goes to `OUT/_downloads/part-*.parquet` as soon as its batch ends (a killed
run keeps what it learned) and is merged into `OUT/downloads.parquet`: one row per clip (`video_id`,
with its `youtube_id`) with `status` (ok / failed), a `reason_code` (unavailable, private, removed,
geo_blocked, timeout, other) and yt-dlp's message. A rerun skips what is on disk and the clips of
YouTube ids known dead (the first four reasons belong to the video, so they hold for all its windows).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from debias import storage
from debias.config import check
from debias.curation.sources import Row, clip_id

DOWNLOAD_SCHEMA = pa.schema([  # OUT/downloads.parquet: one row per clip, across runs
    pa.field("video_id", pa.string()),  # the clip: {youtube_id}_{start:06d}_{end:06d}
    pa.field("youtube_id", pa.string()),
    pa.field("status", pa.string()),  # ok, failed
    pa.field("reason_code", pa.string()),  # failed: unavailable, private, removed, geo_blocked, timeout, other
    pa.field("reason", pa.string()),  # the URL and yt-dlp's message
    pa.field("path", pa.string()),  # ok: the downloaded file
    pa.field("trimmed", pa.bool_()),  # the file holds only the time window (section download)
    pa.field("attempts", pa.int32()),
    pa.field("updated_utc", pa.string()),  # ISO time of the last attempt
])

DEAD_REASONS = ("unavailable", "private", "removed", "geo_blocked")  # retrying cannot help
# First match wins; YouTube's wording as yt-dlp reports it. Rate limiting ("not a bot", HTTP 429) is
# deliberately `other`: it is retried.
REASON_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("timeout", ("timed out", "timeout")),
    ("geo_blocked", ("in your country", "geo restrict", "geo-restrict", "geoblock")),
    ("private", ("private video", "confirm your age", "members-only", "members only")),
    ("removed", ("has been removed", "account associated with this video has been terminated",
                 "copyright claim", "violating youtube", "terms of service")),
    ("unavailable", ("video unavailable", "http error 404", "http error 410", "this video is not available",
                     "does not exist", "no video formats found", "unsupported url")),
)


@dataclass
class DownloadConfig:
    """yt-dlp download of YouTube-id sources (kinetics, minikinetics) into input.root."""

    enabled: bool = False
    url_template: str = "https://www.youtube.com/watch?v={youtube_id}"
    video_format: str = "best[ext=mp4][height<=480]/best[height<=480]/best"  # one file: merging needs ffmpeg
    sections: Literal["auto", "never"] = "auto"  # auto: fetch only the window when ffmpeg is there
    ffmpeg: str = ""  # ffmpeg binary for section downloads; default: PATH, then imageio-ffmpeg's
    concurrency: int = 4  # downloads at once, whatever the CPU count (YouTube throttles bursts)
    videos_per_task: int = 4  # videos one task downloads in turn (one status file per task)
    attempts: int = 3  # per video and run; dead reasons stop at the first
    backoff_s: float = 10.0  # sleep before retry k: backoff_s * 2**(k-1)
    timeout_s: float = 30.0  # socket timeout: a stalled server fails the attempt as `timeout`
    retry_dead: bool = False  # try ids a previous run found unavailable/private/removed/geo_blocked again
    cookies_file: str = ""  # Netscape cookies.txt (yt-dlp --cookies), for age- or sign-in-gated videos
    proxy: str = ""  # e.g. socks5://host:1080
    rate_limit_bytes_s: int = 0  # per download; 0 = unlimited
    sleep_requests_s: float = 0.0  # pause between yt-dlp's HTTP requests (yt-dlp --sleep-requests)

    def __post_init__(self) -> None:
        check("{youtube_id}" in self.url_template, "url_template", "must contain {youtube_id}")
        check(self.concurrency >= 1, "concurrency", "must be >= 1")
        check(self.videos_per_task >= 1, "videos_per_task", "must be >= 1")
        check(self.attempts >= 1, "attempts", "must be >= 1")
        check(self.backoff_s >= 0, "backoff_s", "must be >= 0")
        check(self.timeout_s > 0, "timeout_s", "must be > 0")
        check(not self.cookies_file or Path(self.cookies_file).is_file(), "cookies_file",
              f"{self.cookies_file} not found")
        check(self.rate_limit_bytes_s >= 0, "rate_limit_bytes_s", "must be >= 0")
        check(self.sleep_requests_s >= 0, "sleep_requests_s", "must be >= 0")


def classify(message: str) -> str:
    """yt-dlp's error message -> unavailable, private, removed, geo_blocked, timeout or other."""
    text = message.lower()
    for reason, needles in REASON_PATTERNS:
        if any(n in text for n in needles):
            return reason
    return "other"


def find_ffmpeg(configured: str) -> str:
    """The ffmpeg to cut sections with: the configured one, ffmpeg on PATH, imageio-ffmpeg's, or ''.
    yt-dlp knows programs by file name, and imageio-ffmpeg's binary carries a version suffix, so it is
    reached through a link named `ffmpeg`."""
    if configured or shutil.which("ffmpeg"):
        return configured or shutil.which("ffmpeg") or ""
    try:
        import imageio_ffmpeg
    except ImportError:
        return ""
    link = Path(tempfile.gettempdir()) / f"debias-ffmpeg-{os.getuid()}" / "ffmpeg"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)  # a dangling link from another install
        link.symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
    return str(link)


def _put_on_path(program: str) -> None:
    """yt-dlp decides whether it can cut sections by looking for ffmpeg on PATH (ffmpeg_location is
    used only afterwards), so the program's folder goes on PATH in the process that downloads."""
    folder = str(Path(program).parent)
    if folder not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")


class _Silent:
    """yt-dlp logger: errors arrive as exceptions (and in the status table), not on stderr."""

    def debug(self, msg: str) -> None: ...
    def info(self, msg: str) -> None: ...
    def warning(self, msg: str) -> None: ...
    def error(self, msg: str) -> None: ...


def _ytdlp(url: str, stem: Path, cfg: DownloadConfig, ffmpeg: str, window: tuple[float, float] | None) -> Path:
    import yt_dlp
    from yt_dlp.utils import download_range_func

    opts = {"outtmpl": f"{stem}.%(ext)s", "format": cfg.video_format, "logger": _Silent(), "quiet": True,
            "noprogress": True, "noplaylist": True, "socket_timeout": cfg.timeout_s, "overwrites": True,
            "continuedl": False, "retries": 0, "fragment_retries": 0, "extractor_retries": 0}  # we retry
    if ffmpeg:
        _put_on_path(ffmpeg)
        opts["ffmpeg_location"] = ffmpeg
    if window:
        opts["download_ranges"] = download_range_func(None, [window])
    if cfg.cookies_file:
        opts["cookiefile"] = cfg.cookies_file
    if cfg.proxy:
        opts["proxy"] = cfg.proxy
    if cfg.rate_limit_bytes_s:
        opts["ratelimit"] = cfg.rate_limit_bytes_s
    if cfg.sleep_requests_s:
        opts["sleep_interval_requests"] = cfg.sleep_requests_s
    with yt_dlp.YoutubeDL(opts) as ydl:
        info = ydl.extract_info(url, download=True)
    path = Path(info["requested_downloads"][0]["filepath"])
    if not path.is_file() or path.stat().st_size == 0:
        raise OSError(f"yt-dlp reported {path} but wrote no data")
    return path


def download_one(youtube_id: str, time_start: float, time_end: float, cfg: DownloadConfig,
                 videos_dir: Path, ffmpeg: str) -> dict:
    """Fetch one clip with retries and backoff: its window into `{clip id}.{ext}`, or the whole video
    into `{youtube_id}.{ext}`; returns its status record (DOWNLOAD_SCHEMA)."""
    url = cfg.url_template.format(youtube_id=youtube_id)
    clip = clip_id(youtube_id, time_start, time_end)
    incoming = videos_dir / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    cut = bool(ffmpeg) and cfg.sections == "auto" and time_end >= 0
    code, message = "other", ""
    for attempt in range(1, cfg.attempts + 1):
        try:
            path = _ytdlp(url, incoming / clip, cfg, ffmpeg, (time_start, time_end) if cut else None)
            final = videos_dir / ((clip if cut else youtube_id) + path.suffix)
            os.replace(path, final)
            return _record(clip, youtube_id, "ok", "", "", str(final), cut, attempt)
        except Exception as e:  # noqa: BLE001 - yt-dlp raises many types; all become a status row
            message = f"{type(e).__name__}: {e}"
            code = classify(message)
        for leftover in incoming.glob(f"{clip}.*"):
            leftover.unlink(missing_ok=True)
        if code in DEAD_REASONS:
            break
        cut = cut and code != "other"  # a failed cut (URL not seekable) is retried as a whole download
        if attempt < cfg.attempts:
            time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
    return _record(clip, youtube_id, "failed", code, f"{url}: {message}", "", False, attempt)


def _record(video_id: str, youtube_id: str, status: str, code: str, reason: str, path: str, trimmed: bool,
            attempts: int) -> dict:
    return {"video_id": video_id, "youtube_id": youtube_id, "status": status, "reason_code": code, "reason": reason,
            "path": path, "trimmed": trimmed, "attempts": attempts,
            "updated_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def make_download_fn(cfg: DownloadConfig, videos_dir: str, status_dir: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Download the batch's clips that are not on disk yet; record each attempt's outcome.

    Reads: video_id, youtube_id, source_path, time_start, time_end, error. Writes: source_path, time_start,
    time_end (a trimmed file's window starts at 0), t_download_s, or error / error_code / error_stage
    (`download`).
    """
    # yt-dlp writes local files: a bucket of videos is filled by downloading to a local root, then uploading
    check(not storage.is_uri(videos_dir), "input.root", f"{videos_dir}: download.enabled needs a local videos folder")
    ffmpeg = find_ffmpeg(cfg.ffmpeg) if cfg.sections == "auto" else ""

    def download(batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.copy()
        batch["t_download_s"] = 0.0
        records = []
        for i in range(len(batch)):
            row = batch.iloc[i]
            if row["error"] or Path(row["source_path"]).is_file():
                continue
            t0 = time.perf_counter()
            rec = download_one(row["youtube_id"], float(row["time_start"]), float(row["time_end"]), cfg,
                               Path(videos_dir), ffmpeg)
            batch.loc[batch.index[i], "t_download_s"] = time.perf_counter() - t0
            records.append(rec)
            if rec["status"] == "ok":
                window = (0.0, row["time_end"] - row["time_start"]) if rec["trimmed"] else (row["time_start"], row["time_end"])
                batch.loc[batch.index[i], ["source_path", "time_start", "time_end"]] = [rec["path"], *window]
            else:
                batch.loc[batch.index[i], ["error", "error_code", "error_stage"]] = [
                    f"download of {rec['video_id']} failed ({rec['reason_code']}): {rec['reason']}", rec["reason_code"], "download"]
        if records:
            table = pa.Table.from_pylist(records, schema=DOWNLOAD_SCHEMA)
            digest = hashlib.sha1("\n".join(r["video_id"] for r in records).encode()).hexdigest()[:16]
            Path(status_dir).mkdir(parents=True, exist_ok=True)
            tmp = Path(status_dir) / f".part-{digest}.parquet.tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, Path(status_dir) / f"part-{digest}.parquet")  # a reader never sees half a file
        return batch

    return download


def merge_download_status(out: str | Path) -> dict[str, dict]:
    """Fold OUT/_downloads/part-*.parquet into OUT/downloads.parquet (latest record per clip wins) and
    return {video_id: record}. Safe to call at start (a killed run's parts) and at the end. A table
    written before clips had their own ids (one row per YouTube id) is read with its id as video_id,
    so that what it learned about dead videos still counts."""
    out = Path(out)
    table_path, parts_dir = out / "downloads.parquet", out / "_downloads"
    parts = sorted(parts_dir.glob("part-*.parquet")) if parts_dir.is_dir() else []
    tables = ([pq.read_table(table_path)] if table_path.is_file() else []) + [pq.read_table(p) for p in parts]
    records: dict[str, dict] = {}
    for table in tables:
        if "video_id" not in table.column_names:
            table = table.add_column(0, "video_id", table.column("youtube_id"))
        for rec in table.select(DOWNLOAD_SCHEMA.names).cast(DOWNLOAD_SCHEMA).to_pylist():
            if rec["video_id"] not in records or rec["updated_utc"] >= records[rec["video_id"]]["updated_utc"]:
                records[rec["video_id"]] = rec
    if parts:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".downloads.parquet.tmp"
        pq.write_table(pa.Table.from_pylist(sorted(records.values(), key=lambda r: r["video_id"]),
                                            schema=DOWNLOAD_SCHEMA), tmp)
        os.replace(tmp, table_path)
        for p in parts:
            p.unlink()
    return records


def skip_known_dead(rows: list[Row], status: dict[str, dict], cfg: DownloadConfig) -> list[Row]:
    """Rows whose clip is not on disk and whose YouTube id an earlier run found dead (its latest record,
    whichever window it was for) become error rows at once."""
    if cfg.retry_dead:
        return rows
    latest: dict[str, dict] = {}
    for rec in status.values():
        if rec["youtube_id"] not in latest or rec["updated_utc"] >= latest[rec["youtube_id"]]["updated_utc"]:
            latest[rec["youtube_id"]] = rec
    out = []
    for row in rows:
        rec = latest.get(row.get("youtube_id", ""))
        if (not row["error"] and rec and rec["status"] == "failed" and rec["reason_code"] in DEAD_REASONS
                and not Path(row["source_path"]).is_file()):
            row = {**row, "error": f"download of {row['video_id']} failed ({rec['reason_code']}) on "
                                   f"{rec['updated_utc']} (clip {rec['video_id']}), not retried "
                                   f"(download.retry_dead=true retries): {rec['reason']}",
                   "error_code": rec["reason_code"], "error_stage": "download"}
        out.append(row)
    return out
