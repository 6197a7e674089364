"""Decode-stage benchmark: frames per second per core of decode + resize + crop + JPEG, against
`ffmpeg -threads 1` decoding the same files, the candidate decoders, and the Ray stage on 1 vs 2 workers.

    python benchmarks/bench_decode.py [VIDEO_DIR] [--repeat N] [--skip-ray]

Per-core rates divide frames by CPU seconds (this process's, or ffmpeg's own for ffmpeg), so other
load on the machine slows them less than wall time would. "Frames" are the frames decoded from the
files (every frame must be decoded whichever are kept). The Ray figures are the steady-state throughput
of the preprocess job's decode stage (`Decoder` actors in a flat_map, actor start left out) over the
files repeated --repeat times, for each --workers count, beside the same work in as many plain
processes (the machine's own scaling, which bounds Ray's); wall-clock rates, actor start included,
are printed too. The last line printed is a JSON object with every figure and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from debias.curation.curate import DecodeConfig, Decoder, make_decode_fn  # noqa: E402
from debias.curation.download import find_ffmpeg  # noqa: E402
from debias.curation.video import sample_uniform  # noqa: E402

DEFAULT_DIR = ROOT.parent / "shared" / "data" / "real_clips"
SHORT_SIDE_PX, CROP_PX, NUM_FRAMES, JPEG_QUALITY = 128, 112, 16, 90  # the real-data configs' settings


def _cpu_rate(frames: int, fn) -> float:
    t = time.process_time()
    fn()
    return frames / (time.process_time() - t)


def ffmpeg_fps_per_core(ffmpeg: str, files: list[Path], frames: int) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for f in files:
        subprocess.run([ffmpeg, "-v", "error", "-threads", "1", "-i", str(f), "-map", "0:v:0", "-f", "null", "-"],
                       check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return frames / ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))


def _rows(files: list[Path]) -> list[dict]:
    return [{"video_id": f.stem, "source_path": str(f), "time_start": 0.0, "time_end": -1.0,
             "error": "", "error_code": "", "error_stage": ""} for f in files]


def pipeline(files: list[Path], sampling: str) -> None:
    decode = make_decode_fn(DecodeConfig(sampling=sampling, num_frames=NUM_FRAMES, short_side_px=SHORT_SIDE_PX,
                                         crop_px=CROP_PX, jpeg_quality=JPEG_QUALITY, threads=1))
    for row in _rows(files):
        out = decode(row)
        assert not out[0]["error"], out[0]["error"]


def pyav_decode_only(files: list[Path]) -> int:
    """Decode every frame, convert none (the floor of any PyAV pipeline); returns the frame count."""
    n = 0
    for f in files:
        with av.open(str(f)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            n += sum(1 for _ in container.decode(stream))
    return n


def _crop_jpeg(image_bgr: np.ndarray) -> bytes:
    h, w = image_bgr.shape[:2]
    scale = SHORT_SIDE_PX / min(h, w)
    small = cv2.resize(image_bgr, (max(CROP_PX, round(w * scale)), max(CROP_PX, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    top, left = (small.shape[0] - CROP_PX) // 2, (small.shape[1] - CROP_PX) // 2
    return cv2.imencode(".jpg", small[top : top + CROP_PX, left : left + CROP_PX], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]


def opencv_uniform(files: list[Path]) -> None:
    """OpenCV at its best: grab() decodes without converting; count first (the container's count is
    not trusted), then retrieve() only the kept frames."""
    for f in files:
        cap = cv2.VideoCapture(str(f))
        n = 0
        while cap.grab():
            n += 1
        cap = cv2.VideoCapture(str(f))
        keep = set(sample_uniform(n, NUM_FRAMES).tolist())
        for i in range(n):
            cap.grab()
            if i in keep:
                _crop_jpeg(cap.retrieve()[1])


def decord_usable(files: list[Path]) -> list[Path]:
    """The files decord opens: it refuses videos whose container frame count is broken."""
    import decord

    usable = []
    for f in files:
        try:
            decord.VideoReader(str(f), num_threads=1)
            usable.append(f)
        except decord.DECORDError:
            pass
    return usable


def decord_uniform(files: list[Path]) -> None:
    """ray.data.read_videos' backend (decord), with the same frame choice and output."""
    import decord

    for f in files:
        vr = decord.VideoReader(str(f), num_threads=1)
        frames = vr.get_batch(sample_uniform(len(vr), NUM_FRAMES).tolist()).asnumpy()
        for frame in frames:
            _crop_jpeg(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))


def ray_read_videos_fps(files: list[Path]) -> float:
    """ray.data.read_videos end to end (one row per decoded frame, full size, every frame converted),
    wall-clock frames/s on the 2 workers."""
    import ray

    t = time.perf_counter()
    n = ray.data.read_videos([str(f) for f in files]).count()
    return n / (time.perf_counter() - t)


class TimedDecoder(Decoder):
    """The preprocess job's decode actor, each output row stamped with when and where it was made."""

    def __call__(self, row: dict) -> list[dict]:
        return [{**r, "done_s": time.time(), "pid": os.getpid()} for r in super().__call__(row)]


def ray_stage_fps(files: list[Path], repeat: int, workers: int, frames: int) -> tuple[float, float]:
    """Steady-state decoded frames/s of the preprocess job's decode stage (`Decoder` actors, 1 CPU
    each) with `workers` actors: videos finished after every actor has finished its first (actor
    start and imports left out, as a long job amortises them) times the mean frames per video; and
    the wall-clock rate of the whole run."""
    import ray
    from ray.data import ActorPoolStrategy

    rows = _rows(files) * repeat
    cfg = DecodeConfig(num_frames=NUM_FRAMES, short_side_px=SHORT_SIDE_PX, crop_px=CROP_PX)
    ds = ray.data.from_items(rows, override_num_blocks=max(2, len(rows) // 6)).flat_map(
        TimedDecoder, fn_constructor_args=(cfg,), num_cpus=1, compute=ActorPoolStrategy(size=workers))
    t = time.perf_counter()
    done = ds.select_columns(["done_s", "pid", "error"]).take_all()
    wall = frames * repeat / (time.perf_counter() - t)
    assert len(done) == len(rows) and not any(r["error"] for r in done)
    warm = max(min(r["done_s"] for r in done if r["pid"] == pid) for pid in {r["pid"] for r in done})
    after = [r["done_s"] for r in done if r["done_s"] > warm]
    return len(after) / (max(after) - warm) * frames / len(files), wall


def _decode_chunk(rows: list[dict]) -> int:
    decode = make_decode_fn(DecodeConfig(num_frames=NUM_FRAMES, short_side_px=SHORT_SIDE_PX, crop_px=CROP_PX))
    return sum(len(decode(row)) for row in rows)


def processes_fps(files: list[Path], repeat: int, workers: int, frames: int) -> float:
    """The same decode work in `workers` plain processes (no Ray): what the machine itself allows.
    Where this does not scale either (shared or hyper-threaded cores, clocks that drop as more cores
    work), no scheduler can: the Ray figure is read against it."""
    from concurrent.futures import ProcessPoolExecutor

    rows = _rows(files) * repeat
    chunks = [rows[i : i + 6] for i in range(0, len(rows), 6)]  # as the Ray stage's blocks
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode_chunk, chunks[:workers]))  # start the processes and their imports first
        t = time.perf_counter()
        assert sum(pool.map(_decode_chunk, chunks)) == len(rows)
        elapsed = time.perf_counter() - t
    return frames * repeat / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video_dir", nargs="?", default=str(DEFAULT_DIR), help="folder of videos (default: the real clips)")
    parser.add_argument("--repeat", type=int, default=20, help="times the files are repeated for the Ray stage")
    parser.add_argument("--skip-ray", action="store_true", help="only the single-core figures")
    parser.add_argument("--workers", default="1,2", help="Ray stage worker counts to time, comma-separated; the "
                                                         "bar is 2 over 1 (e.g. 1,2,4,8 on a machine with the cores)")
    args = parser.parse_args()
    files = sorted(p for p in Path(args.video_dir).iterdir() if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".webm"))
    if not files:
        sys.exit(f"no videos in {args.video_dir}")
    frames = pyav_decode_only(files)
    print(f"{len(files)} videos, {frames} frames (counted by decoding), {os.cpu_count()} cores")
    pipeline(files[:2], "uniform")  # warm caches and imports

    result: dict = {}
    ffmpeg = find_ffmpeg("")
    result["ffmpeg"] = ffmpeg or "not found"
    result["ffmpeg_fps_per_core"] = round(ffmpeg_fps_per_core(ffmpeg, files, frames), 1) if ffmpeg else None
    result["pipeline_fps_per_core"] = round(_cpu_rate(frames, lambda: pipeline(files, "uniform")), 1)
    result["pyav_decode_only_fps_per_core"] = round(_cpu_rate(frames, lambda: pyav_decode_only(files)), 1)
    result["paper_policy_fps_per_core"] = round(_cpu_rate(frames, lambda: pipeline(files, "paper")), 1)
    result["opencv_fps_per_core"] = round(_cpu_rate(frames, lambda: opencv_uniform(files)), 1)
    try:
        usable = decord_usable(files)
        result["decord_fps_per_core"] = round(_cpu_rate(pyav_decode_only(usable), lambda: decord_uniform(usable)), 1)
        result["decord_files_refused"] = len(files) - len(usable)
    except ImportError:
        result["decord_fps_per_core"] = None  # decord (ray.data.read_videos' backend) not installed
    if result["ffmpeg_fps_per_core"]:
        result["pipeline_over_ffmpeg"] = round(result["pipeline_fps_per_core"] / result["ffmpeg_fps_per_core"], 3)
    for key in sorted(k for k in result if k.endswith("_fps_per_core")):
        print(f"  {key:<32} {result[key]}")

    if not args.skip_ray:
        import ray

        # Logical CPUs beyond the 2 workers: Ray Data splits its CPU budget over all operators of the
        # plan (the count after the decode too), and with exactly 2 it often ran one decode task at a
        # time. The decode's TaskPoolStrategy(size=workers) is what bounds the cores used.
        workers = sorted({int(w) for w in args.workers.split(",")} | {1, 2})
        ray.init(address="local", num_cpus=max(4, workers[-1] + 2), include_dashboard=False, log_to_driver=False)
        both = {w: ray_stage_fps(files, args.repeat * max(1, w // 2), w, frames) for w in workers}
        fps = {w: steady for w, (steady, _) in both.items()}
        result["ray_wall_fps_by_workers"] = {str(w): round(wall, 1) for w, (_, wall) in both.items()}
        one, two = fps[1], fps[2]
        result.update(ray_1_worker_fps=round(one, 1), ray_2_workers_fps=round(two, 1), scaling_2_over_1=round(two / one, 3))
        result["ray_stage_fps_by_workers"] = {str(w): round(f, 1) for w, f in fps.items()}
        plain = {w: processes_fps(files, args.repeat * max(1, w // 2), w, frames) for w in workers}
        result["processes_fps_by_workers"] = {str(w): round(f, 1) for w, f in plain.items()}
        result["processes_2_over_1"] = round(plain[2] / plain[1], 3)
        for w, f in fps.items():
            print(f"  Ray decode stage: {w} worker(s) {f:.0f} frames/s, x{f / one:.2f} over 1 (wall, actor start "
                  f"included: {both[w][1]:.0f}); plain processes "
                  f"{plain[w]:.0f} frames/s, x{plain[w] / plain[1]:.2f}")
        if result["decord_fps_per_core"] is not None:
            result["ray_read_videos_fps"] = round(ray_read_videos_fps(usable), 1)
        ray.shutdown()
    result["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " + \
        next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
