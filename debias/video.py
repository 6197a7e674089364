"""Video I/O and frame geometry: decode with PyAV, encode H.264, resize/crop, JPEG.

The geometry helpers are shared by frames and masks so that a mask provider that works from
annotations (or from a model run at another resolution) lands on exactly the stored pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np


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


def decode_window(path: str | Path, time_start_s: float = 0.0, time_end_s: float | None = None) -> DecodedVideo:
    """Decode every frame whose timestamp lies in [time_start_s, time_end_s) to RGB.

    The frame count comes from decoding, not from container metadata (which is often wrong).
    Raises VideoError with a readable reason for missing, empty or undecodable files.
    """
    path = Path(path)
    if not path.exists():
        raise VideoError("missing_file", f"file not found: {path}")
    if path.stat().st_size == 0:
        raise VideoError("empty_file", f"empty file (0 bytes): {path}")
    frames, indices = [], []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError("no_video_stream", f"no video stream in {path}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            for i, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else i / (fps or 1.0)
                if t < time_start_s:
                    continue
                if time_end_s is not None and t >= time_end_s:
                    break
                frames.append(frame.to_ndarray(format="rgb24"))
                indices.append(i)
    except VideoError:
        raise
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


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise VideoError("jpeg_failed", "JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8 RGB."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoError("corrupt_jpeg", "corrupt JPEG frame")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def pack_mask(mask: np.ndarray) -> bytes:
    """(H, W) bool -> bit-packed bytes (H*W/8); shape comes from the row's height/width."""
    return np.packbits(mask.astype(bool).ravel()).tobytes()


def unpack_mask(data: bytes, height: int, width: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=height * width)
    return bits.reshape(height, width).astype(bool)
