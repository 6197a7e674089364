"""Video I/O and frame geometry: decode with PyAV, encode H.264, resize/crop (JPEG and masks: debias.curation.shards).

The geometry helpers are shared by frames and masks so that a mask provider that works from
annotations (or from a model run at another resolution) lands on exactly the stored pixels.

`decode_clips` is the fast path the curation uses: one demux-only pass reads the frame timestamps
(cheap: no decoding), the caller picks the frames it keeps, and a decode pass converts only those,
shrunk while still YUV before the colour conversion (measured on the real clips: converting a frame
costs about as much as decoding it, so converting only the kept ones is most of the speed).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

try:
    import av
except ImportError:  # the geometry helpers need no PyAV (a GPU box that only trains has none)
    av = None
import cv2
import numpy as np
import pyarrow.fs

from debias import storage


class VideoError(RuntimeError):
    """A video cannot be used. `code` is the short category counted in summaries; the message is the
    readable reason (naming the file) stored in the error table."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DecodedVideo:
    frames: np.ndarray  # (N, H, W, 3) uint8 RGB, every decoded frame in the window
    fps: float  # native frame rate as reported by the stream (average for VFR)
    frame_indices: np.ndarray  # (N,) index of each frame in the whole video


@dataclass(frozen=True)
class DecodedClips:
    clips: list[np.ndarray]  # per clip: (T, crop, crop, 3) uint8 BGR (what cv2.imencode takes)
    frame_indices: list[np.ndarray]  # per clip: (T,) index of each frame among the window's decoded frames
    fps: float  # stream's average rate (VFR: the mean; sampling uses the timestamps, not this)
    num_decoded: int  # frames decoded in the window: the count comes from decoding, not metadata


# pick(times_s) -> per clip, indices into the window's frames (repeats allowed: padding).
FramePicker = Callable[[np.ndarray], list[np.ndarray]]


def write_mp4(path: str | Path, frames_rgb: np.ndarray, fps: float, crf: int = 18) -> None:
    """Encode (N, H, W, 3) uint8 RGB frames as H.264 (yuv420p) MP4. H and W must be even."""
    n, h, w, _ = frames_rgb.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even frame sizes, got {w}x{h}")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # One thread and fixed options keep the bytes identical for the same input (determinism).
        stream.codec_context.thread_count = 1
        stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
        for frame in frames_rgb:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _open_checked(path: str) -> av.container.InputContainer:
    """The video at a local path or a URI (read through pyarrow.fs: s3://, gs://, ...), checked."""
    fs, inner = storage.filesystem(path)
    try:
        info = fs.get_file_info(inner)
    except OSError as e:
        raise VideoError("missing_file", f"cannot reach {path}: {e}") from None
    if info.type == pyarrow.fs.FileType.NotFound:
        raise VideoError("missing_file", f"file not found: {path}")
    if info.size == 0:
        raise VideoError("empty_file", f"empty file (0 bytes): {path}")
    try:
        container = av.open(path if not storage.is_uri(path) else fs.open_input_file(inner))
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise VideoError("undecodable", f"cannot decode {path}: {e}") from None
    if not container.streams.video:
        container.close()
        raise VideoError("no_video_stream", f"no video stream in {path} (audio only?)")
    return container


def _seek_to(container: av.container.InputContainer, stream: av.video.stream.VideoStream, time_start_s: float) -> None:
    """Jump to the keyframe before `time_start_s`, so a window late in a long video costs no more than
    one at the start (a whole YouTube video downloaded for a 10 s window)."""
    if time_start_s > 0:
        origin = stream.start_time or 0
        container.seek(origin + int(time_start_s / stream.time_base), stream=stream, backward=True)


def _frame_time_s(pts: int | None, stream: av.video.stream.VideoStream) -> float | None:
    """Seconds since the stream's first frame (windows are relative to the video's start)."""
    return None if pts is None else float((pts - (stream.start_time or 0)) * stream.time_base)


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 0.0


def _window_times(path: str, time_start_s: float, time_end_s: float | None) -> np.ndarray:
    """Sorted presentation times of the frames in [start, end), from the packets alone (no decoding)."""
    times = []
    with _open_checked(path) as container:
        stream = container.streams.video[0]
        _seek_to(container, stream, time_start_s)
        try:
            for packet in container.demux(stream):
                t = _frame_time_s(packet.pts if packet.pts is not None else packet.dts, stream)
                if packet.size == 0 or t is None or t < time_start_s:
                    continue
                if time_end_s is not None and t >= time_end_s + 1.0:  # past any B-frame reordering
                    break
                if time_end_s is None or t < time_end_s:
                    times.append(t)
        except (av.error.FFmpegError, ValueError, OSError):
            pass  # a truncated file demuxes up to the damage; the decode pass says whether that is usable
    return np.sort(np.asarray(times, dtype=np.float64))


def _shrink_bgr(frame: av.VideoFrame, short_side_px: int, crop_px: int) -> np.ndarray:
    """Resize (short side -> short_side_px) while still YUV, one cv2.resize per plane, convert the
    small frame to BGR, undo the container's rotation, centre-crop to a crop_px square.

    Measured on the real clips: 5000 frames/s per core, against 2400 for swscale's resize + convert
    (`frame.reformat(w, h, ...)`) and 1700 for swscale straight to RGB, same pixels within 0.4 / 255.
    """
    if frame.format.name != "yuv420p" or frame.width % 2 or frame.height % 2:  # rare: one swscale pass to I420
        frame = frame.reformat(width=frame.width // 2 * 2, height=frame.height // 2 * 2, format="yuv420p")
    scale = short_side_px / min(frame.width, frame.height)
    # I420 needs even sizes; rounding up keeps the short side >= short_side_px (>= crop_px).
    new_w = max(crop_px, round(frame.width * scale) + 1) // 2 * 2
    new_h = max(crop_px, round(frame.height * scale) + 1) // 2 * 2
    h, w = frame.height, frame.width
    yuv = frame.to_ndarray().ravel()  # the Y plane, then U and V at half resolution, back to back
    y, u, v = yuv[: h * w].reshape(h, w), yuv[h * w : h * w * 5 // 4], yuv[h * w * 5 // 4 :]
    small = [cv2.resize(y, (new_w, new_h), interpolation=cv2.INTER_AREA)] + \
        [cv2.resize(c.reshape(h // 2, w // 2), (new_w // 2, new_h // 2), interpolation=cv2.INTER_AREA) for c in (u, v)]
    i420 = np.concatenate([plane.ravel() for plane in small]).reshape(new_h * 3 // 2, new_w)
    image = cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)
    if frame.rotation:
        image = np.rot90(image, frame.rotation // 90)
    h, w = image.shape[:2]
    top, left = (h - crop_px) // 2, (w - crop_px) // 2
    return np.ascontiguousarray(image[top : top + crop_px, left : left + crop_px])


def bgr_to_rgb(clip: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) BGR uint8 -> a contiguous RGB copy; one OpenCV call for the clip (numpy's copy of the
    reversed channel view took 15x as long)."""
    t, h, w, _ = clip.shape
    return cv2.cvtColor(clip.reshape(t * h, w, 3), cv2.COLOR_BGR2RGB).reshape(clip.shape)


def decode_clips(path: str | Path, pick: FramePicker, short_side_px: int, crop_px: int,
                 time_start_s: float = 0.0, time_end_s: float | None = None, threads: int = 1) -> DecodedClips:
    """Decode the frames of [time_start_s, time_end_s) that `pick` chooses, resized and centre-cropped.

    `pick` gets the window's frame times (seconds, sorted; variable frame rates keep their real
    timestamps) and returns per clip the indices of the frames to keep; it may raise VideoError (too
    short). Only kept frames are colour-converted. If the frames that decode differ from the packets
    (a damaged or truncated stream, packets without timestamps), `pick` chooses again among the
    decoded frames. Rotation metadata is honoured. Raises VideoError with a readable reason naming
    the file.
    """
    path = str(path)
    times = _window_times(path, time_start_s, time_end_s)
    window = f"[{time_start_s}, {'end' if time_end_s is None else time_end_s}) s"
    for _attempt in range(2):
        try:  # no timestamps from the packets: a decode-only pass finds them, the next one converts
            picks = pick(times) if len(times) else []
        except VideoError as e:
            raise VideoError(e.code, f"{path}: {e}") from None
        wanted = set(np.concatenate(picks).tolist()) if picks else set()
        kept: dict[int, np.ndarray] = {}
        decoded_times: list[float] = []
        with _open_checked(path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = threads
            stream.thread_type = "AUTO" if threads != 1 else "SLICE"
            fps = _stream_fps(stream)
            _seek_to(container, stream, time_start_s)
            decoder = container.decode(stream)
            while True:
                try:  # only the decoder's errors mean a damaged file; a bug below must not pass for one
                    frame = next(decoder)
                except StopIteration:
                    break
                except (av.error.FFmpegError, ValueError, OSError) as e:
                    if not decoded_times:
                        raise VideoError("undecodable", f"cannot decode {path}: {e}") from None
                    break  # a truncated file decodes up to the damage
                t = _frame_time_s(frame.pts, stream)
                t = t if t is not None else len(decoded_times) / (fps or 1.0)
                if t < time_start_s:
                    continue
                if time_end_s is not None and t >= time_end_s:
                    break
                if len(decoded_times) in wanted:
                    kept[len(decoded_times)] = _shrink_bgr(frame, short_side_px, crop_px)
                decoded_times.append(t)
        if picks and len(decoded_times) == len(times) and len(kept) == len(wanted):
            return DecodedClips([np.stack([kept[i] for i in p]) for p in picks],
                                [np.asarray(p, dtype=np.int64) for p in picks], fps, len(decoded_times))
        if not decoded_times:
            raise VideoError("no_frames", f"no decodable frames in {window} of {path}")
        times = np.asarray(decoded_times, dtype=np.float64)
    raise VideoError("undecodable", f"frames of {path} decode differently on each pass")


def decode_window(path: str | Path, time_start_s: float = 0.0, time_end_s: float | None = None) -> DecodedVideo:
    """Decode every frame whose timestamp lies in [time_start_s, time_end_s) to full-size RGB.

    For checks and annotation tools; curation uses `decode_clips`. The frame count comes from
    decoding, not from container metadata (which is often wrong); rotation metadata is honoured.
    Raises VideoError with a readable reason for missing, empty or undecodable files.
    """
    path = str(path)
    frames, indices = [], []
    with _open_checked(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = _stream_fps(stream)
        _seek_to(container, stream, time_start_s)
        try:
            for frame in container.decode(stream):
                t = _frame_time_s(frame.pts, stream)
                t = t if t is not None else len(indices) / (fps or 1.0)
                if t < time_start_s:
                    continue
                if time_end_s is not None and t >= time_end_s:
                    break
                image = frame.to_ndarray(format="rgb24")
                frames.append(np.rot90(image, frame.rotation // 90) if frame.rotation else image)
                indices.append(len(indices))
        except (av.error.FFmpegError, ValueError, OSError) as e:
            if not frames:
                raise VideoError("undecodable", f"cannot decode {path}: {e}") from None
            # A truncated file decodes up to the damage; keep what decoded (the tail is lost, not the video).
    if not frames:
        raise VideoError("no_frames", f"no decodable frames in [{time_start_s}, {time_end_s}) s of {path}")
    return DecodedVideo(np.stack(frames), fps, np.asarray(indices, dtype=np.int64))


def sample_uniform(num_available: int, num_frames: int) -> np.ndarray:
    """Indices of `num_frames` frames spread evenly over `num_available` (repeats when short)."""
    if num_available <= 0:
        raise ValueError("no frames to sample from")
    centers = (np.arange(num_frames) + 0.5) * num_available / num_frames
    return np.minimum(centers.astype(np.int64), num_available - 1)


# Frames a temporal median is taken over: a static background is as well estimated from 32 frames spread
# over a long clip (sampling=paper stores every frame) as from all of them, at a fraction of the cost.
MEDIAN_FRAMES = 32


@functools.cache
def _median_comparators(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort network on `n` (a power of two) wires, less the comparators that
    cannot reach wire n // 2 (the median's): (low, high) pairs in the order they run."""
    pairs, p = [], 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                pairs += [(i + j, i + j + k) for i in range(min(k, n - j - k)) if (i + j) // (2 * p) == (i + j + k) // (2 * p)]
            k //= 2
        p *= 2
    needed, kept = {n // 2}, []
    for a, b in reversed(pairs):
        if a in needed or b in needed:
            kept.append((a, b))
            needed |= {a, b}
    return tuple(reversed(kept))


def temporal_median(clip: np.ndarray, max_frames: int = MEDIAN_FRAMES) -> np.ndarray:
    """(T, ...) uint8 -> the per-pixel median (the upper one for even T) over at most `max_frames` frames
    spread evenly over T.

    A sorting network of elementwise min/max over whole frames rather than np.median, which sorts each
    pixel's values apart and made the median most of a motion mask's cost (profiled at 112 px).
    The frames are padded to a power of two with as many 0 as 255 frames (one more 0 when odd), which
    leaves the median at wire n // 2."""
    if len(clip) > max_frames:
        clip = clip[sample_uniform(len(clip), max_frames)]
    t = len(clip)
    n = 1 << (t - 1).bit_length()
    flat = clip.reshape(t, -1)
    pad = n - t
    wires = [flat[i].copy() for i in range(t)] + [np.full(flat.shape[1], 255 * (i % 2), np.uint8) for i in range(pad)]
    low = np.empty_like(wires[0])
    for a, b in _median_comparators(n):
        np.minimum(wires[a], wires[b], out=low)
        np.maximum(wires[a], wires[b], out=wires[b])
        wires[a], low = low, wires[a]
    return wires[n // 2].reshape(clip.shape[1:])


def _require_frames(times_s: np.ndarray, num_frames: int) -> None:
    if len(times_s) < num_frames:
        raise VideoError("too_short", f"{len(times_s)} frames in the window ({times_s[-1] - times_s[0]:.2f} s), "
                                      f"fewer than the clip length decode.num_frames={num_frames}")


def pick_uniform(times_s: np.ndarray, num_frames: int) -> list[np.ndarray]:
    """One clip of `num_frames` frames spread evenly over the window (by frame, so over time at CFR)."""
    _require_frames(times_s, num_frames)
    return [sample_uniform(len(times_s), num_frames)]


def pick_all(times_s: np.ndarray, num_frames: int) -> list[np.ndarray]:
    """Every frame at the native rate (the paper's: a `num_frames` window is picked at train time)."""
    _require_frames(times_s, num_frames)
    return [np.arange(len(times_s))]


def pick_clips(times_s: np.ndarray, num_frames: int, num_clips: int) -> list[np.ndarray]:
    """`num_clips` clips of `num_frames` consecutive frames, their starts spread evenly over the window
    (overlapping when the window is short)."""
    _require_frames(times_s, num_frames)
    last_start = len(times_s) - num_frames
    starts = np.linspace(0, last_start, num_clips).round().astype(np.int64) if num_clips > 1 else [last_start // 2]
    return [np.arange(s, s + num_frames) for s in starts]


def pick_at_rate(times_s: np.ndarray, sample_fps: float, num_frames: int) -> list[np.ndarray]:
    """The seed study's: frames at `sample_fps` from the window's start, by timestamp (so variable frame
    rates sample real time), the first `num_frames`; a shorter video repeats its last sampled frame."""
    targets = times_s[0] + np.arange(num_frames) / sample_fps
    half_frame = 0.5 * float(np.median(np.diff(times_s))) if len(times_s) > 1 else 0.0
    targets = targets[targets <= times_s[-1] + half_frame]
    picked = np.minimum(np.searchsorted(times_s, targets - half_frame), len(times_s) - 1)
    return [np.concatenate([picked, np.full(num_frames - len(picked), picked[-1])])]


def resize_crop(image: np.ndarray, short_side: int, crop_size: int, nearest: bool = False) -> np.ndarray:
    """Resize so the short side is `short_side`, then take the centre `crop_size` square.

    One cv2.resize call (area filter for images, nearest for masks); works on (H, W) and (H, W, C).
    """
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    new_w, new_h = max(crop_size, round(w * scale)), max(crop_size, round(h * scale))
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - crop_size) // 2, (new_w - crop_size) // 2
    return resized[top : top + crop_size, left : left + crop_size]


_thread_streams = threading.local()


@contextlib.contextmanager
def thread_stream(device: "torch.device") -> "Iterator[torch.cuda.Stream | None]":
    """Run the block on this thread's own CUDA stream (made once per thread), then wait for it.

    The JPEG decoder makes the calling thread's current stream wait for nvJPEG; on the shared default
    stream that wait would also hold back every other thread's kernels (the training step, or a second
    concurrent call of a label actor). On its own stream one thread's decode overlaps another's
    compute. A no-op on CPU."""
    if device.type != "cuda":
        yield None
        return
    import torch

    streams = _thread_streams.__dict__.setdefault("by_device", {})
    stream = streams.get(device)
    if stream is None:
        stream = streams[device] = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        yield stream
    stream.synchronize()
