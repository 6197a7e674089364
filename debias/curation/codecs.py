"""How the curated rows hold pictures: frames as JPEG, person masks bit-packed, one frame per item; the
encoders, and the decoders on the CPU (OpenCV) or on a device (nvJPEG, bits unpacked on the GPU)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from debias.curation.video import VideoError

if TYPE_CHECKING:
    import torch  # the GPU decoders only; a machine that curates on CPUs needs no torch import here


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    return encode_jpeg_bgr(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), quality)


def encode_jpeg_bgr(image_bgr: np.ndarray, quality: int) -> bytes:
    """JPEG of a BGR image (what decode_clips returns; the file decodes to RGB as usual)."""
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise VideoError("jpeg_failed", "JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes, half_size: bool = False) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8 RGB; with `half_size`, (ceil(H/2), ceil(W/2), 3), which libjpeg
    decodes at a fraction of the cost (it skips the high frequencies instead of resizing)."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_REDUCED_COLOR_2 if half_size else cv2.IMREAD_COLOR)
    if image is None:
        raise VideoError("corrupt_jpeg", "corrupt JPEG frame")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_jpegs_on(device: "torch.device", jpegs: "list[bytes] | list[torch.Tensor]") -> list["torch.Tensor"]:
    """JPEG bytes -> (3, H, W) uint8 RGB tensors on `device`, the whole list in one call.

    On CUDA, nvJPEG decodes the list as one batch (baseline JPEGs on the hardware JPEG engine of
    A100/H100-class GPUs), so the frames never exist in host memory; on CPU, libjpeg-turbo. A
    corrupt frame raises VideoError("corrupt_jpeg").
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg as tv_decode_jpeg

    # bytes -> tensors (bytearray: torch wants a writable buffer; a copy of a few KB); callers with many
    # frames pass 1-D uint8 tensors, e.g. views split off one buffer, to save the per-frame Python work
    data = [j if isinstance(j, torch.Tensor) else torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    try:
        return tv_decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as e:
        raise VideoError("corrupt_jpeg", f"corrupt JPEG frame ({e})") from e


def pack_masks(masks: np.ndarray) -> list[bytes]:
    """(T, H, W) bool -> per frame bit-packed bytes (H*W/8, padded to a byte); the shape comes from the
    row's height/width. One call for the clip."""
    return [p.tobytes() for p in np.packbits(np.asarray(masks, dtype=bool).reshape(len(masks), -1), axis=1)]


def pack_mask(mask: np.ndarray) -> bytes:
    """(H, W) bool -> `pack_masks` of one frame."""
    return pack_masks(np.asarray(mask)[None])[0]


def unpack_mask(data: bytes, height: int, width: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=height * width)
    return bits.reshape(height, width).astype(bool)


def unpack_masks_on(device: "torch.device", packed: list[bytes], height: int, width: int) -> "torch.Tensor":
    """Bit-packed masks of one size (`pack_mask`) -> (N, height, width) bool on `device`; the bits are
    unpacked there, so only the packed bytes (1/8 of a bool mask) cross to the GPU. An item of `packed`
    may hold several masks back to back (N counts masks, not items)."""
    import torch

    row_bytes = (height * width + 7) // 8
    data = np.frombuffer(bytearray(b"".join(packed)), dtype=np.uint8).reshape(-1, row_bytes)
    data = torch.from_numpy(data).to(device)
    shifts = torch.arange(7, -1, -1, device=device, dtype=torch.uint8)
    bits = (data[:, :, None] >> shifts) & 1  # most significant bit first, as np.packbits
    return bits.reshape(len(data), -1)[:, : height * width].reshape(len(data), height, width).bool()
