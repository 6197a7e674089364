"""The yt-dlp download stage, for real, against a local HTTP server on 127.0.0.1: good clips, a 404, a
truncated body and a server that stalls past the timeout; the status table and reruns."""

import threading
import time
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from debias.curation import shards
from debias.config import ConfigError
from debias.curation.curate import DecodeConfig, make_decode_fn
from debias.curation.download import (DOWNLOAD_SCHEMA, DownloadConfig, classify, download_one, find_ffmpeg, make_download_fn,
                             merge_download_status, skip_known_dead)
from debias.curation.sources import InputConfig, read_source
from debias.curation.video import decode_window, write_mp4

STALL_S = 4.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Serves CLIPS[name] at /name.mp4; /gone.mp4 is a 404, /trunc.mp4 promises more bytes than it
    sends, /stall.mp4 answers only after STALL_S."""
    media = tmp_path_factory.mktemp("media")
    clips = {}
    for i, name in enumerate(["okvideo0001", "okvideo0002", "trunc"]):
        frames = np.full((24, 48, 64, 3), 40 * i, np.uint8)
        frames[:, :, : 8 + i * 8] = 255  # each clip is recognisable
        write_mp4(media / f"{name}.mp4", frames, fps=8.0)
        clips[name] = (media / f"{name}.mp4").read_bytes()
    hits: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output clean
            pass

        def do_GET(self) -> None:
            name = self.path.strip("/").removesuffix(".mp4")
            hits[name] = hits.get(name, 0) + 1
            if name == "stall":
                time.sleep(STALL_S)
            if name not in clips:
                self.send_error(404, "Not Found")
                return
            body = clips[name]
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if name == "trunc":
                self.wfile.write(body[: len(body) // 3])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", clips, hits
    httpd.shutdown()


def _cfg(base: str, **kw) -> DownloadConfig:
    settings = dict(sections="never", attempts=2, backoff_s=0.05, timeout_s=1.0)
    return DownloadConfig(enabled=True, url_template=base + "/{youtube_id}.mp4", **{**settings, **kw})


def test_download_one_fetches_a_clip_and_classifies_failures(server, tmp_path):
    base, clips, hits = server
    ok = download_one("okvideo0001", 0.0, 2.0, _cfg(base), tmp_path, ffmpeg="")
    assert ok["status"] == "ok" and not ok["trimmed"] and ok["attempts"] == 1
    assert (tmp_path / "okvideo0001.mp4").read_bytes() == clips["okvideo0001"]
    assert len(decode_window(tmp_path / "okvideo0001.mp4").frames) == 24

    gone = download_one("gone", 0.0, 2.0, _cfg(base), tmp_path, ffmpeg="")
    assert (gone["status"], gone["reason_code"], gone["attempts"]) == ("failed", "unavailable", 1)  # dead: no retry
    assert "404" in gone["reason"] and "/gone.mp4" in gone["reason"]

    trunc = download_one("trunc", 0.0, 2.0, _cfg(base), tmp_path, ffmpeg="")
    assert trunc["status"] == "failed" and trunc["attempts"] == 2  # retried, then given up
    assert trunc["reason_code"] == "other" and hits["trunc"] >= 2
    assert not list(tmp_path.glob("trunc*")) and not list((tmp_path / ".incoming").iterdir())  # no half file

    t = time.perf_counter()
    stall = download_one("stall", 0.0, 2.0, _cfg(base, attempts=1), tmp_path, ffmpeg="")
    assert (stall["status"], stall["reason_code"]) == ("failed", "timeout"), stall
    assert time.perf_counter() - t < STALL_S  # the socket timeout cut it, not the server


def test_section_download_cuts_the_window_with_ffmpeg(server, tmp_path):
    ffmpeg = find_ffmpeg("")
    if not ffmpeg:
        pytest.skip("no ffmpeg binary (PATH or imageio-ffmpeg): section downloads fall back to whole files")
    base, _clips, _hits = server
    rec = download_one("okvideo0002", 1.0, 2.0, _cfg(base, sections="auto"), tmp_path, ffmpeg=ffmpeg)
    assert rec["status"] == "ok" and rec["trimmed"], rec
    assert rec["path"].endswith("okvideo0002_000001_000002.mp4")
    n = len(decode_window(rec["path"]).frames)
    assert 4 <= n < 24  # about one second of the three (keyframe-aligned), not the whole clip


def test_download_fn_updates_rows_writes_status_and_a_rerun_skips(server, tmp_path):
    base, _clips, hits = server
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    rows = [{"video_id": f"{v}_000000_000003", "youtube_id": v, "source_path": str(videos / f"{v}.mp4"),
             "time_start": 0.0, "time_end": 3.0, "error": "", "error_code": "", "error_stage": "", "label": "x"}
            for v in ["okvideo0001", "gone", "trunc"]]
    cfg = _cfg(base)
    fn = make_download_fn(cfg, str(videos), str(out / "_downloads"))
    result = fn(pd.DataFrame(rows)).set_index("youtube_id")
    assert result.loc["okvideo0001", "error"] == "" and result.loc["okvideo0001", "source_path"].endswith("okvideo0001.mp4")
    assert result.loc["gone", "error_stage"] == "download" and result.loc["gone", "error_code"] == "unavailable"
    assert "download of trunc_000000_000003 failed (other)" in result.loc["trunc", "error"]

    status = merge_download_status(out)  # parts -> OUT/downloads.parquet, one row per clip
    assert {k: (v["youtube_id"], v["status"]) for k, v in status.items()} == {
        "okvideo0001_000000_000003": ("okvideo0001", "ok"), "gone_000000_000003": ("gone", "failed"),
        "trunc_000000_000003": ("trunc", "failed")}
    assert pq.read_table(out / "downloads.parquet").schema == DOWNLOAD_SCHEMA
    assert pq.read_table(out / "downloads.parquet").num_rows == 3 and not list((out / "_downloads").iterdir())

    # Rerun: the downloaded file is skipped, the dead id is not asked again (in any window: the video is
    # gone), the truncated one is retried.
    gone_hits, ok_hits = hits["gone"], hits["okvideo0001"]
    other_window = {**rows[1], "video_id": "gone_000005_000009", "time_start": 5.0, "time_end": 9.0}
    again = skip_known_dead([*rows, other_window], status, cfg)
    assert [r["error_code"] for r in again] == ["", "unavailable", "", "unavailable"]
    assert "not retried" in again[1]["error"] and "gone_000005_000009" in again[3]["error"]
    fn(pd.DataFrame(again))
    assert hits["gone"] == gone_hits and hits["okvideo0001"] == ok_hits
    assert skip_known_dead(rows, status, _cfg(base, retry_dead=True))[1]["error"] == ""
    with pytest.raises(ConfigError, match="input.root: s3://bucket/videos: download.enabled needs a local videos folder"):
        make_download_fn(cfg, "s3://bucket/videos", str(out / "_downloads"))


def test_two_windows_of_one_youtube_id_are_two_clips_and_two_files(server, tmp_path):
    """A Kinetics-600-style list with one YouTube id in two windows, different labels: read as two clips,
    downloaded as two trimmed files (one per window), two rows of the download table, two decodable clips."""
    ffmpeg = find_ffmpeg("")
    if not ffmpeg:
        pytest.skip("no ffmpeg binary (PATH or imageio-ffmpeg): without section downloads one whole file serves both")
    base, _clips, _hits = server
    videos, out = tmp_path / "videos", tmp_path / "out"
    (tmp_path / "k600_val.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                           "cracking knuckles,okvideo0002,0,1,validate\n"
                                           "cracking neck,okvideo0002,2,3,validate\n")
    rows, _ = read_source(InputConfig(source="kinetics", manifest=str(tmp_path / "k600_val.csv"), root=str(videos)))
    assert [(r["video_id"], r["label"], r["error"]) for r in rows] == [
        ("okvideo0002_000000_000001", "cracking knuckles", ""), ("okvideo0002_000002_000003", "cracking neck", "")]
    fn = make_download_fn(_cfg(base, sections="auto"), str(videos), str(out / "_downloads"))
    result = fn(pd.DataFrame(rows))
    assert list(result.error) == ["", ""]
    assert sorted(p.name for p in videos.glob("*.mp4")) == ["okvideo0002_000000_000001.mp4", "okvideo0002_000002_000003.mp4"]
    assert [Path(p).name for p in result.source_path] == ["okvideo0002_000000_000001.mp4", "okvideo0002_000002_000003.mp4"]
    status = merge_download_status(out)
    assert sorted(status) == ["okvideo0002_000000_000001", "okvideo0002_000002_000003"]
    assert {r["youtube_id"] for r in status.values()} == {"okvideo0002"} and all(r["trimmed"] for r in status.values())
    decode = make_decode_fn(DecodeConfig(num_frames=4, short_side_px=32, crop_px=32))
    clips = [decode(r)[0] for r in result.to_dict("records")]
    assert [c["error"] for c in clips] == ["", ""] and all(len(c["frames"]) == 4 for c in clips)
    # a rerun finds both files by their clip ids, trimmed (decoded from 0)
    again, _ = read_source(InputConfig(source="kinetics", manifest=str(tmp_path / "k600_val.csv"), root=str(videos)))
    assert [(Path(r["source_path"]).name, r["time_start"], r["time_end"]) for r in again] == [
        ("okvideo0002_000000_000001.mp4", 0.0, 1.0), ("okvideo0002_000002_000003.mp4", 0.0, 1.0)]


def test_a_status_table_from_before_clip_ids_still_marks_dead_videos(tmp_path):
    """downloads.parquet of an earlier release: one row per YouTube id, no video_id column."""
    legacy = pa.schema([f for f in DOWNLOAD_SCHEMA if f.name != "video_id"])
    pq.write_table(pa.Table.from_pylist([{"youtube_id": "gone", "status": "failed", "reason_code": "removed",
                                          "reason": "x", "path": "", "trimmed": False, "attempts": 1,
                                          "updated_utc": "2026-01-01T00:00:00+00:00"}], schema=legacy),
                   tmp_path / "downloads.parquet")
    status = merge_download_status(tmp_path)
    assert status["gone"]["video_id"] == "gone"
    row = {"video_id": "gone_000001_000011", "youtube_id": "gone", "source_path": str(tmp_path / "gone.mp4"),
           "error": "", "error_code": "", "error_stage": ""}
    assert skip_known_dead([row], status, DownloadConfig())[0]["error_code"] == "removed"


@pytest.mark.parametrize("message,reason", [
    ("ERROR: [youtube] abc: Video unavailable. This video is not available", "unavailable"),
    ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access to this video", "private"),
    ("ERROR: [youtube] abc: Sign in to confirm your age. This video may be inappropriate for some users.", "private"),
    ("ERROR: [youtube] abc: This video has been removed by the uploader", "removed"),
    ("ERROR: [youtube] abc: Video unavailable. This video is no longer available because the YouTube account "
     "associated with this video has been terminated.", "removed"),
    ("ERROR: [youtube] abc: The uploader has not made this video available in your country", "geo_blocked"),
    ("ERROR: unable to download video data: <urlopen error timed out>", "timeout"),
    ("ERROR: unable to download video data: HTTP Error 404: Not Found", "unavailable"),
    ("ERROR: [youtube] abc: Sign in to confirm you're not a bot", "other"),
    ("ERROR: unable to download video data: HTTP Error 429: Too Many Requests", "other"),
])
def test_classify_yt_dlp_messages(message, reason):
    assert classify(message) == reason


@pytest.mark.slow
def test_preprocess_job_downloads_decodes_and_a_rerun_asks_again_only_for_retryable_ids(server, tmp_path, ray_local):
    from debias.config import load_config
    from debias.curation.curate import PreprocessConfig
    from debias.curation.preprocess import run_preprocess

    base, _clips, hits = server
    (tmp_path / "k400.csv").write_text("label,youtube_id,time_start,time_end,split,is_cc\n"
                                       "abseiling,okvideo0001,0,2,train,0\n"
                                       "yoga,okvideo0001,1,3,val,0\n"  # the same video, another window
                                       "zumba,okvideo0002,1,3,train,0\n"
                                       "zumba,gone,0,10,train,0\n"
                                       "zumba,trunc,0,10,val,0\n"
                                       "abseiling,okvideo0001,0,2,train,0\n")  # the same id and window: a duplicate
    cfg = load_config(PreprocessConfig, None, [
        f"out={tmp_path / 'out'}", f"input.manifest={tmp_path / 'k400.csv'}", "input.source=kinetics",
        "labels.mask_provider=none", "labels.scene_provider=none", "decode.num_frames=8",
        "download.enabled=true", f"download.url_template={base}/{{youtube_id}}.mp4", "download.attempts=2",
        "download.backoff_s=0.05", "download.timeout_s=2", "download.concurrency=2"])
    summary = run_preprocess(cfg)
    assert (summary["videos_in"], summary["videos_ok"], summary["videos_failed"]) == (6, 3, 3)
    assert summary["failures_by_reason"] == {"duplicate_id": 1, "other": 1, "unavailable": 1}
    assert summary["downloads"] == {"ok": 3, "failed_by_reason": {"other": 1, "unavailable": 1}}
    assert summary["stage_task_s"]["download"] > 0
    out = str(tmp_path / "out")
    errors = {e["video_id"]: e for e in shards.read_errors(out).to_pylist()}
    assert errors["gone_000000_000010"]["error_stage"] == "download" and "404" in errors["gone_000000_000010"]["error"]
    assert errors["okvideo0001_000000_000002#2"]["error_code"] == "duplicate_id"
    rows = pa.concat_tables([shards.read_parquet(f) for f in shards.shard_files(out)]).to_pylist()
    assert sorted((r["video_id"], r["label"]) for r in rows) == [  # one YouTube id, two windows: two clips
        ("okvideo0001_000000_000002", "abseiling"), ("okvideo0001_000001_000003", "yoga"),
        ("okvideo0002_000001_000003", "zumba")]
    assert all(len(r["frames"]) == 8 for r in rows)
    if find_ffmpeg(""):  # the workers cut the windows (2 s of 3 s): trimmed files, one per clip, decoded from 0
        assert sorted(Path(r["source_path"]).name for r in rows) == [
            "okvideo0001_000000_000002.mp4", "okvideo0001_000001_000003.mp4", "okvideo0002_000001_000003.mp4"]

    before = dict(hits)
    again = run_preprocess(cfg)
    assert (again["videos_ok"], again["videos_failed"]) == (3, 3)
    assert hits["okvideo0001"] == before["okvideo0001"] and hits["gone"] == before["gone"]  # on disk / known dead
    assert hits["trunc"] > before["trunc"]  # a transient failure is tried again
    assert pq.read_table(tmp_path / "out" / "downloads.parquet").num_rows == 5  # one row per clip
