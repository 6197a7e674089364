"""Removing the people from frames, given their masks: the fills the mask loss's clips, the scene
labels of people-free frames and the scene-bias measures share (numpy and torch twins, same results)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

Fill = Literal["mean", "zero", "noise", "blur"]


def box_masks(masks: np.ndarray) -> np.ndarray:
    """(T, H, W) bool -> (T, H, W) bool: each frame's bounding box of its true pixels (empty stays empty)."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)

    def inside(x: np.ndarray) -> np.ndarray:  # between the first and the last true entry of each row
        return np.maximum.accumulate(x, axis=1) & np.maximum.accumulate(x[:, ::-1], axis=1)[:, ::-1]

    return inside(rows)[:, :, None] & inside(cols)[:, None, :]


def box_masks_torch(masks: "torch.Tensor") -> "torch.Tensor":
    """`box_masks` on tensors (any device): (..., H, W) bool -> (..., H, W) bool."""
    rows, cols = masks.any(dim=-1).int(), masks.any(dim=-2).int()

    def inside(x: "torch.Tensor") -> "torch.Tensor":  # as box_masks
        return (x.cummax(dim=-1).values & x.flip(-1).cummax(dim=-1).values.flip(-1)).bool()

    return inside(rows).unsqueeze(-1) & inside(cols).unsqueeze(-2)


def fill_people(frames: np.ndarray, masks: np.ndarray, fill: Fill, rng: np.random.Generator) -> np.ndarray:
    """Remove the people: (T, H, W, 3) uint8 frames, (T, H, W) bool masks -> new frames."""
    if fill == "mean":  # the hot path (the paper's fill): vectorised, no boolean gather/scatter
        frames = np.ascontiguousarray(frames)
        means = np.array([cv2.mean(f)[:3] for f in frames]).round().astype(np.uint8)  # (T, 3), exact sums
        return np.where(masks[..., None], means[:, None, None, :], frames)
    out = frames.copy()
    if fill == "zero":
        out[masks] = 0
    elif fill == "noise":
        out[masks] = rng.integers(0, 256, size=(int(masks.sum()), 3), dtype=np.uint8)
    else:  # blur: a heavy blur of the frame, so the region keeps the scene's colours but no shape
        k = max(3, (frames.shape[1] // 4) | 1)
        blurred = np.stack([cv2.GaussianBlur(f, (k, k), 0) for f in frames])
        out[masks] = blurred[masks]
    return out


def fill_people_torch(frames: "torch.Tensor", masks: "torch.Tensor", fill: Fill,
                      generator: "torch.Generator | None" = None) -> "torch.Tensor":
    """`fill_people` on tensors (any device): (..., 3, H, W) uint8 frames, (..., H, W) bool masks ->
    new frames. "mean" is each frame's mean colour, rounded, as `fill_people`."""
    import torch

    m = masks.unsqueeze(-3)  # (..., 1, H, W), broadcast over the colour channels
    if fill == "mean":
        means = frames.float().mean(dim=(-2, -1), keepdim=True).round().to(torch.uint8)
        return torch.where(m, means, frames)
    if fill == "zero":
        return frames.masked_fill(m, 0)
    if fill == "noise":
        noise = torch.randint(0, 256, frames.shape, dtype=torch.uint8, device=frames.device, generator=generator)
        return torch.where(m, noise, frames)
    from torchvision.transforms.v2.functional import gaussian_blur

    k = max(3, (frames.shape[-2] // 4) | 1)  # as fill_people; sigma from k as OpenCV does for sigma 0
    flat = frames.reshape(-1, *frames.shape[-3:]).float()
    blurred = gaussian_blur(flat, [k, k]).round().clamp(0, 255).to(torch.uint8).reshape(frames.shape)
    return torch.where(m, blurred, frames)
