"""Training-side clip building: shard rows -> uint8 clip tensors, plus the human-masked twin.

Runs as a Ray Data `map_batches` step before the trainer, so JPEG decoding and augmentation happen
on CPU workers in parallel with the training step. Clips stay uint8 until the device (4x less data
to move); the model normalises them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import cv2
import numpy as np

from debias.config import check
from debias.video import decode_jpeg, unpack_mask

Fill = Literal["mean", "zero", "noise", "blur"]

# The shard columns a training clip needs (everything else stays on disk).
CLIP_COLUMNS = ["frames", "human_masks", "height", "width", "person_frac", "label_id", "scene_id", "scene_probs"]


@dataclass
class ClipConfig:
    clip_len: int = 16  # frames per training clip (a random window when the shard stores more)
    crop_px: int = 32  # random crop when training, centre crop when evaluating
    flip: bool = False  # horizontal flip; off when left/right is part of the label (walk_left vs walk_right)
    mask_fill: Fill = "mean"  # how people are removed: per-frame mean colour (paper), zero, noise, blur
    # true: fill the union of the clip's masks in every frame, so no moving silhouette is left. The
    # paper fills per frame (false); measured on the demo, per frame is better (README, findings).
    mask_tube: bool = False
    min_person_frac: float = 0.0  # clip used by the mask loss only if this share of frames shows a person (paper: 0.7)

    def __post_init__(self) -> None:
        check(self.clip_len >= 1, "clip_len", "must be >= 1")
        check(self.crop_px >= 8, "crop_px", "must be >= 8")
        check(0.0 <= self.min_person_frac <= 1.0, "min_person_frac", "must be in [0, 1]")


def fill_people(frames: np.ndarray, masks: np.ndarray, fill: Fill, rng: np.random.Generator) -> np.ndarray:
    """Remove the people: (T, H, W, 3) uint8 frames, (T, H, W) bool masks -> new frames."""
    out = frames.copy()
    if fill == "zero":
        out[masks] = 0
    elif fill == "noise":
        out[masks] = rng.integers(0, 256, size=(int(masks.sum()), 3), dtype=np.uint8)
    elif fill == "mean":
        means = frames.reshape(len(frames), -1, 3).mean(axis=1).round().astype(np.uint8)  # (T, 3)
        out[masks] = np.broadcast_to(means[:, None, None, :], frames.shape)[masks]
    else:  # blur: a heavy blur of the frame, so the region keeps the scene's colours but no shape
        k = max(3, (frames.shape[1] // 4) | 1)
        blurred = np.stack([cv2.GaussianBlur(f, (k, k), 0) for f in frames])
        out[masks] = blurred[masks]
    return out


def make_clip_fn(cfg: ClipConfig, train: bool, with_masked: bool, seed: int = 0) -> Callable[[dict], dict]:
    """Batch step: decode JPEG frames, pick a window and crop, build the masked twin.

    Reads: CLIP_COLUMNS. Writes: clips (B, T, H, W, 3) uint8, masked (same, if `with_masked`),
    mask_valid (B,) bool, label_id (B,) int64, scene_id (B,) int64, scene_probs (B, S) float32.
    """

    def build(batch: dict) -> dict:
        rng = np.random.default_rng(None if train else seed)
        clips, masked = [], []
        for i in range(len(batch["label_id"])):
            h, w = int(batch["height"][i]), int(batch["width"][i])
            jpegs, packed = batch["frames"][i], batch["human_masks"][i]
            n = len(jpegs)
            start = int(rng.integers(0, n - cfg.clip_len + 1)) if train and n > cfg.clip_len else max(0, (n - cfg.clip_len) // 2)
            idx = np.minimum(np.arange(start, start + cfg.clip_len), n - 1)  # repeat the last frame when short
            frames = np.stack([decode_jpeg(jpegs[j]) for j in idx])
            top = int(rng.integers(0, h - cfg.crop_px + 1)) if train else (h - cfg.crop_px) // 2
            left = int(rng.integers(0, w - cfg.crop_px + 1)) if train else (w - cfg.crop_px) // 2
            window = (slice(None), slice(top, top + cfg.crop_px), slice(left, left + cfg.crop_px))
            frames = frames[window]
            flip = train and cfg.flip and rng.random() < 0.5
            if flip:
                frames = frames[:, :, ::-1]
            clips.append(frames)
            if with_masked:
                masks = np.stack([unpack_mask(packed[j], h, w) for j in idx])[window]
                if flip:
                    masks = masks[:, :, ::-1]
                if cfg.mask_tube:
                    masks = np.broadcast_to(masks.any(axis=0), masks.shape)
                masked.append(fill_people(frames, masks, cfg.mask_fill, rng))
        # A clip with no person pixels has nothing to remove (its "masked" twin is the clip itself).
        person = np.asarray(batch["person_frac"], np.float32)
        out = {
            "clips": np.ascontiguousarray(np.stack(clips)),
            "mask_valid": (person > 0) & (person >= cfg.min_person_frac),
            "label_id": np.asarray(batch["label_id"], np.int64),
            "scene_id": np.asarray(batch["scene_id"], np.int64),
            "scene_probs": np.stack([np.asarray(p, np.float32) for p in batch["scene_probs"]]),
        }
        if with_masked:
            out["masked"] = np.ascontiguousarray(np.stack(masked))
        return out

    return build
