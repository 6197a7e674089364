"""The yt-dlp download stage, for real, against a local HTTP server on 127.0.0.1: good clips, a 404, a
truncated body and a server that stalls past the timeout; the status table and reruns."""

import threading
import time
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from debias.download import (DownloadConfig, classify, download_one, find_ffmpeg, make_download_fn,
                             merge_download_status, skip_known_dead)
from debias.video import decode_window, write_mp4

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
    rows = [{"video_id": v, "youtube_id": v, "source_path": str(videos / f"{v}.mp4"), "time_start": 0.0,
             "time_end": 3.0, "error": "", "error_code": "", "error_stage": "", "label": "x"}
            for v in ["okvideo0001", "gone", "trunc"]]
    cfg = _cfg(base)
    fn = make_download_fn(cfg, str(videos), str(out / "_downloads"))
    result = fn(pd.DataFrame(rows)).set_index("video_id")
    assert result.loc["okvideo0001", "error"] == "" and result.loc["okvideo0001", "source_path"].endswith("okvideo0001.mp4")
    assert result.loc["gone", "error_stage"] == "download" and result.loc["gone", "error_code"] == "unavailable"
    assert "failed (other)" in result.loc["trunc", "error"]

    status = merge_download_status(out)  # parts -> OUT/downloads.parquet
    assert {k: v["status"] for k, v in status.items()} == {"okvideo0001": "ok", "gone": "failed", "trunc": "failed"}
    assert pq.read_table(out / "downloads.parquet").num_rows == 3 and not list((out / "_downloads").iterdir())

    # Rerun: the downloaded file is skipped, the dead id is not asked again, the truncated one is retried.
    gone_hits, ok_hits = hits["gone"], hits["okvideo0001"]
    again = skip_known_dead(rows, status, cfg)
    assert [r["error_code"] for r in again] == ["", "unavailable", ""]
    assert "not retried" in again[1]["error"]
    fn(pd.DataFrame(again))
    assert hits["gone"] == gone_hits and hits["okvideo0001"] == ok_hits
    assert skip_known_dead(rows, status, _cfg(base, retry_dead=True))[1]["error"] == ""


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


def test_preprocess_job_downloads_decodes_and_a_rerun_asks_again_only_for_retryable_ids(server, tmp_path, ray_local):
    from debias.config import load_config
    from debias.curate import PreprocessConfig
    from ray_jobs.preprocess import run_preprocess

    base, _clips, hits = server
    (tmp_path / "k400.csv").write_text("label,youtube_id,time_start,time_end,split,is_cc\n"
                                       "abseiling,okvideo0001,0,2,train,0\n"
                                       "zumba,okvideo0002,1,3,train,0\n"
                                       "zumba,gone,0,10,train,0\n"
                                       "zumba,trunc,0,10,val,0\n")
    cfg = load_config(PreprocessConfig, None, [
        f"out={tmp_path / 'out'}", f"input.manifest={tmp_path / 'k400.csv'}", "input.source=kinetics",
        "labels.mask_provider=none", "labels.scene_provider=none", "decode.num_frames=8",
        "download.enabled=true", f"download.url_template={base}/{{youtube_id}}.mp4", "download.attempts=2",
        "download.backoff_s=0.05", "download.timeout_s=2", "download.concurrency=2"])
    summary = run_preprocess(cfg)
    assert (summary["videos_ok"], summary["videos_failed"]) == (2, 2)
    assert summary["failures_by_reason"] == {"other": 1, "unavailable": 1}
    assert summary["downloads"] == {"ok": 2, "failed_by_reason": {"other": 1, "unavailable": 1}}
    assert summary["stage_task_s"]["download"] > 0
    errors = {e["video_id"]: e for e in pq.read_table(tmp_path / "out" / "errors.parquet").to_pylist()}
    assert errors["gone"]["stage"] == "download" and "404" in errors["gone"]["reason"]
    rows = pq.read_table(tmp_path / "out" / "shards").to_pylist()
    assert sorted(r["video_id"] for r in rows) == ["okvideo0001", "okvideo0002"]
    assert all(len(r["frames"]) == 8 for r in rows)
    if find_ffmpeg(""):  # the workers cut the windows (2 s of 3 s): trimmed files, decoded from 0
        assert sorted(Path(r["source_path"]).name for r in rows) == ["okvideo0001_000000_000002.mp4",
                                                                     "okvideo0002_000001_000003.mp4"]

    before = dict(hits)
    again = run_preprocess(cfg)
    assert (again["videos_ok"], again["videos_failed"]) == (2, 2)
    assert hits["okvideo0001"] == before["okvideo0001"] and hits["gone"] == before["gone"]  # on disk / known dead
    assert hits["trunc"] > before["trunc"]  # a transient failure is tried again
    assert pq.read_table(tmp_path / "out" / "downloads.parquet").num_rows == 4
