"""Training-side clip building: shard rows -> uint8 clip tensors, plus the human-masked twin.

`plan_clips` draws each clip's window, crop and flip on CPU; then one of two renderers builds it
(`loader.decode_on`):
- tasks: `make_clip_fn`, a Ray Data `map_batches` step that decodes JPEGs, crops, resizes and fills
  people with OpenCV on CPU workers, in parallel with the training step (right for CPU training);
- device: `make_clip_plan_fn` keeps the frames as JPEG, and the training worker's `ClipCollate`
  decodes (nvJPEG) and renders them on its GPU, in Ray's prefetch threads. Measured on an H200, CPU
  rendering needed about 25 cores per GPU to keep SDN fed (README).
Clips stay uint8 until the model, which normalises them. `write_pattern_shards` writes small shards
of a moving-square task directly in the shard schema, for tests and benchmarks that need no videos.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from ray.data.collate_fn import NumpyBatchCollateFn

from debias.config import check
from debias.curation.labels.fill import Fill, box_masks, box_masks_torch, fill_people, fill_people_torch
from debias.curation.codecs import decode_jpeg, unpack_mask


# The shard columns a training clip needs (everything else stays on disk).
CLIP_COLUMNS = ["video_id", "frames", "human_masks", "height", "width", "person_frac", "label_id", "scene_id",
                "scene_probs"]
# The official code's multi-scale corner crop: scales 1 down to 1/2 in steps of 2^(-1/4).
PAPER_SCALES = [1.0, 0.841, 0.707, 0.595, 0.5]


@dataclass
class ClipConfig:
    clip_len: int = 16  # frames per training clip (a random window when the shard stores more)
    crop_px: int = 32  # random crop when training, centre crop when evaluating
    flip: bool = False  # horizontal flip; off when left/right is part of the label (walk_left vs walk_right)
    mask_fill: Fill = "mean"  # how people are removed: per-frame mean colour (paper), zero, noise, blur
    # true: fill the union of the clip's masks in every frame, so no moving silhouette is left; false:
    # each frame's own mask, as the paper does (the comparison: docs/findings.md).
    mask_tube: bool = False
    # true: fill each frame's bounding box of its person pixels instead of the silhouette (the paper
    # fills detector boxes); one box around all of a frame's people. With mask_tube: the box of the union.
    mask_box: bool = False
    min_person_frac: float = 0.0  # clip used by the mask loss only if this share of frames shows a person (paper: 0.7)
    # Multi-scale crop when training: a square of side scale x the shorter frame side, at a random
    # corner or the centre, resized to crop_px (paper: PAPER_SCALES). Empty: a random crop_px square
    # of the stored frames, no resize (right when the stored frames are barely larger than crop_px).
    scales: list[float] = field(default_factory=list)
    eval_clips: int = 1  # clips per video at evaluation, evenly spaced windows; video-level scores average them

    def __post_init__(self) -> None:
        check(self.clip_len >= 1, "clip_len", "must be >= 1")
        check(self.crop_px >= 8, "crop_px", "must be >= 8")
        check(0.0 <= self.min_person_frac <= 1.0, "min_person_frac", "must be in [0, 1]")
        check(all(0.0 < s <= 1.0 for s in self.scales), "scales", "each scale must be in (0, 1]")
        check(self.eval_clips >= 1, "eval_clips", "must be >= 1")


def video_key(video_id: str) -> int:
    """A stable int64 for a video id (torch batches hold no strings; video-level eval groups by it)."""
    return int.from_bytes(hashlib.blake2b(video_id.encode(), digest_size=8).digest(), "little", signed=True)


def _resize(frames: np.ndarray, size_px: int, interpolation: int) -> np.ndarray:
    """(T, h, w[, 3]) -> (T, size_px, size_px[, 3])."""
    return np.stack([cv2.resize(f, (size_px, size_px), interpolation=interpolation) for f in frames])


@dataclass(frozen=True)
class ClipPlan:
    """Where one training/eval clip comes from: the row, its frame indices, the square cut before any
    resize to crop_px, and the flip. Drawn on CPU by `plan_clips`; rendered by `render_clips` (numpy,
    in Ray Data tasks) or `ClipCollate` (torch, on the training device)."""

    row: int
    frames: np.ndarray  # (clip_len,) indices into the row's stored frames
    top: int
    left: int
    side: int
    flip: bool


def plan_clips(cfg: ClipConfig, train: bool, batch: dict, rng: np.random.Generator) -> list[ClipPlan]:
    """One random window per row when training (multi-scale corner crop, flip); `eval_clips` evenly
    spaced windows per row with a centre crop when evaluating. Reads: frames, height, width."""
    per_row = 1 if train else cfg.eval_clips
    plans = []
    for i in range(len(batch["label_id"])):
        h, w, n = int(batch["height"][i]), int(batch["width"][i]), len(batch["frames"][i])
        if train:
            starts = [int(rng.integers(0, n - cfg.clip_len + 1)) if n > cfg.clip_len else 0]
        elif per_row == 1:
            starts = [max(0, (n - cfg.clip_len) // 2)]
        else:
            starts = [round(x) for x in np.linspace(0, max(0, n - cfg.clip_len), per_row)]
        for start in starts:
            frames = np.minimum(np.arange(start, start + cfg.clip_len), n - 1)  # repeat the last frame when short
            if train and cfg.scales:
                side = round(cfg.scales[int(rng.integers(len(cfg.scales)))] * min(h, w))
                top, left = [(0, 0), (0, w - side), (h - side, 0), (h - side, w - side),
                             ((h - side) // 2, (w - side) // 2)][int(rng.integers(5))]
            else:
                side = min(cfg.crop_px, h, w)
                if train:
                    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
                else:
                    top, left = (h - side) // 2, (w - side) // 2
            flip = bool(train and cfg.flip and rng.random() < 0.5)
            plans.append(ClipPlan(i, frames, top, left, side, flip))
    return plans


def clip_targets(cfg: ClipConfig, batch: dict, plans: list[ClipPlan]) -> dict[str, np.ndarray]:
    """Per clip: mask_valid, label_id, scene_id, scene_probs, video_key (the non-pixel outputs)."""
    rows = np.array([p.row for p in plans], np.int64)
    # A clip with no person pixels has nothing to remove (its "masked" twin is the clip itself).
    person = np.asarray(batch["person_frac"], np.float32)[rows]
    return {
        "mask_valid": (person > 0) & (person >= cfg.min_person_frac),
        "label_id": np.asarray(batch["label_id"], np.int64)[rows],
        "scene_id": np.asarray(batch["scene_id"], np.int64)[rows],
        "scene_probs": np.stack([np.asarray(batch["scene_probs"][i], np.float32) for i in rows]),
        "video_key": np.asarray([video_key(str(batch["video_id"][i])) for i in rows], np.int64),
    }


def render_clips(cfg: ClipConfig, batch: dict, plans: list[ClipPlan], with_masked: bool,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Decode, cut, resize and flip each planned clip with OpenCV, and fill its people for the masked twin.
    Returns clips (N, T, crop_px, crop_px, 3) uint8 and, if `with_masked`, masked (same)."""
    # Written in place: stacking a list of clips would copy every batch once more.
    shape = (len(plans), cfg.clip_len, cfg.crop_px, cfg.crop_px, 3)
    clips = np.empty(shape, np.uint8)
    masked = np.empty(shape, np.uint8) if with_masked else None
    for k, p in enumerate(plans):
        h, w = int(batch["height"][p.row]), int(batch["width"][p.row])
        window = (slice(None), slice(p.top, p.top + p.side), slice(p.left, p.left + p.side))
        frames = np.stack([decode_jpeg(batch["frames"][p.row][j]) for j in p.frames])[window]
        if p.side != cfg.crop_px:
            frames = _resize(frames, cfg.crop_px, cv2.INTER_LINEAR)
        clips[k] = frames[:, :, ::-1] if p.flip else frames
        if with_masked:
            masks = np.stack([unpack_mask(batch["human_masks"][p.row][j], h, w) for j in p.frames])[window]
            if p.side != cfg.crop_px:
                masks = _resize(masks.astype(np.uint8), cfg.crop_px, cv2.INTER_NEAREST).astype(bool)
            if p.flip:
                masks = masks[:, :, ::-1]
            if cfg.mask_box:
                masks = box_masks(masks)
            if cfg.mask_tube:
                masks = np.broadcast_to(masks.any(axis=0), masks.shape)
            masked[k] = fill_people(clips[k], masks, cfg.mask_fill, rng)
    return {"clips": clips, "masked": masked} if with_masked else {"clips": clips}


def make_clip_fn(cfg: ClipConfig, train: bool, with_masked: bool, seed: int = 0) -> Callable[[dict], dict]:
    """Batch step (loader.decode_on=tasks): JPEG decode, windows, crops and the masked twin on CPU.
    1:1 per row when training (one random window), 1:eval_clips when evaluating.

    Reads: CLIP_COLUMNS. Writes: clips (N, T, crop_px, crop_px, 3) uint8, masked (same, if
    `with_masked`), and `clip_targets`' columns.
    """

    def build(batch: dict) -> dict:
        rng = np.random.default_rng(None if train else seed)
        plans = plan_clips(cfg, train, batch, rng)
        return {**render_clips(cfg, batch, plans, with_masked, rng), **clip_targets(cfg, batch, plans)}

    return build


def pack_clips(batch: dict, plans: list[ClipPlan], with_masked: bool) -> dict[str, np.ndarray]:
    """The planned clips still encoded, for `ClipCollate`: per clip the window's JPEGs in one blob with
    their end offsets, and its packed masks in one blob (1/8 byte per pixel)."""
    jpegs, ends, masks = [], [], []
    for p in plans:
        frames = [batch["frames"][p.row][j] for j in p.frames]
        jpegs.append(b"".join(frames))
        ends.append(np.cumsum([len(f) for f in frames]))
        if with_masked:
            masks.append(b"".join(batch["human_masks"][p.row][j] for j in p.frames))
    rows = [p.row for p in plans]
    out = {"jpegs": np.array(jpegs, dtype=object), "jpeg_ends": np.stack(ends).astype(np.int64),
           "height": np.asarray(batch["height"], np.int64)[rows], "width": np.asarray(batch["width"], np.int64)[rows],
           "box": np.array([(p.top, p.left, p.side) for p in plans], np.int64).reshape(-1, 3),
           "flip": np.array([p.flip for p in plans], bool)}
    if with_masked:
        out["packed_masks"] = np.array(masks, dtype=object)
    return out


def make_clip_plan_fn(cfg: ClipConfig, train: bool, with_masked: bool, seed: int = 0) -> Callable[[dict], dict]:
    """Batch step (loader.decode_on=device): only draws the windows, crops and flips on CPU and keeps
    the frames as JPEG (about 10x fewer bytes through the object store than decoded clips); the
    training worker's `ClipCollate` decodes and renders them on its device. Same cardinality as
    `make_clip_fn`. Reads: CLIP_COLUMNS. Writes: `pack_clips`' and `clip_targets`' columns."""

    def plan(batch: dict) -> dict:
        plans = plan_clips(cfg, train, batch, np.random.default_rng(None if train else seed))
        return {**pack_clips(batch, plans, with_masked), **clip_targets(cfg, batch, plans)}

    return plan


class ClipCollate(NumpyBatchCollateFn):
    """`iter_torch_batches` collate step (loader.decode_on=device): rows of `make_clip_plan_fn` ->
    the batch `train_one_epoch` / `evaluate` read, rendered on `device`.

    On CUDA the batch's JPEGs are decoded in one nvJPEG call (the hardware JPEG engine on A100/H100),
    cut and resized for all clips at once (`roi_align`: bilinear at the same sample points as OpenCV's
    INTER_LINEAR), flipped, and the masked twin filled there, so the CPU only reads Parquet and draws
    random numbers. Ray runs it in its prefetch threads, beside the training step. Returns clips
    (and masked) (B, T, crop_px, crop_px, 3) uint8 plus `clip_targets`' columns, on `device`.
    """

    def __init__(self, cfg: ClipConfig, device: "torch.device") -> None:
        self.cfg, self.device = cfg, device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        import torch

        from debias.curation.video import thread_stream

        # On its own stream, so that waiting for nvJPEG never stalls the training step's stream;
        # record_stream keeps the allocator from reusing the memory while the step still reads it.
        with thread_stream(self.device) as stream:
            out = self._render(batch)
        if stream is not None:
            for t in out.values():
                t.record_stream(torch.cuda.default_stream(self.device))
        return out

    def _render(self, batch: dict[str, np.ndarray]) -> dict:
        import torch
        from torchvision.ops import roi_align

        from debias.curation.codecs import decode_jpegs_on, unpack_masks_on

        cfg, dev = self.cfg, self.device
        n, t, px = len(batch["jpegs"]), cfg.clip_len, cfg.crop_px
        # One buffer for the batch's JPEGs, split into per-frame views in one call: per-frame Python
        # work here holds the GIL that the training step in the main thread needs to launch its kernels.
        data = torch.frombuffer(bytearray(b"".join(batch["jpegs"])), dtype=torch.uint8)
        lengths = np.diff(batch["jpeg_ends"], axis=1, prepend=0).ravel()
        decoded = decode_jpegs_on(dev, list(torch.split(data, lengths.tolist())))  # n * t tensors (3, h, w)
        with_masked = "packed_masks" in batch
        clips = torch.empty((n, t, 3, px, px), dtype=torch.uint8, device=dev)
        masks = torch.empty((n, t, px, px), dtype=torch.bool, device=dev) if with_masked else None
        sizes = np.stack([batch["height"], batch["width"]], axis=1)
        for h, w in np.unique(sizes, axis=0):  # roi_align needs one frame size per call
            idx = np.flatnonzero((sizes == (h, w)).all(axis=1))
            frame_idx = (idx[:, None] * t + np.arange(t)).ravel()
            frames = torch.stack(decoded if len(idx) == n else [decoded[k] for k in frame_idx]).float()
            top, left, side = (torch.as_tensor(batch["box"][idx], dtype=torch.float32)[:, c].repeat_interleave(t)
                               for c in range(3))
            # (frame index, x1, y1, x2, y2); aligned=True puts samples at pixel centres, as OpenCV does.
            boxes = torch.stack([torch.arange(len(top), dtype=torch.float32), left, top, left + side, top + side],
                                dim=1).to(dev)
            cut = roi_align(frames, boxes, output_size=px, spatial_scale=1.0, sampling_ratio=1, aligned=True)
            clips[idx] = cut.round_().clamp_(0, 255).to(torch.uint8).view(len(idx), t, 3, px, px)
            if with_masked:  # each clip's packed masks are t frames back to back
                full = unpack_masks_on(dev, [batch["packed_masks"][i] for i in idx], int(h), int(w))
                cut = roi_align(full.float().unsqueeze(1), boxes, output_size=px, spatial_scale=1.0, sampling_ratio=1,
                                aligned=True)
                masks[idx] = (cut > 0.5).view(len(idx), t, px, px)
        # torch.tensor copies: the batch's arrays can be read-only views of Arrow memory
        flip = torch.tensor(batch["flip"]).to(dev)
        clips = torch.where(flip.view(n, 1, 1, 1, 1), clips.flip(-1), clips)
        out = {k: torch.tensor(batch[k]).to(dev) for k in
               ("mask_valid", "label_id", "scene_id", "scene_probs", "video_key")}
        if with_masked:
            masks = torch.where(flip.view(n, 1, 1, 1), masks.flip(-1), masks)
            if cfg.mask_box:
                masks = box_masks_torch(masks)
            if cfg.mask_tube:
                masks = masks.any(dim=1, keepdim=True).expand_as(masks)
            out["masked"] = fill_people_torch(clips, masks, cfg.mask_fill).permute(0, 1, 3, 4, 2).contiguous()
        out["clips"] = clips.permute(0, 1, 3, 4, 2).contiguous()
        return out


def write_pattern_shards(out: str | Path, splits: dict[str, int], num_classes: int = 4, num_frames: int = 8,
                         size_px: int = 32, bias: float = 0.9, rows_per_file: int = 64, seed: int = 0) -> str:
    """Shards of a moving-square task written straight in SHARD_SCHEMA, for tests and benchmarks
    (no source videos, no PyAV): class k moves a square in direction k; its "person" mask is the
    square; the background colour is the scene, equal to the class with probability `bias`.

    `splits`: rows per split, e.g. {"train": 32, "val": 8}. Publishes them in OUT (a local folder or a
    URI) as `debias preprocess` does, through `debias.curation.shards`; returns OUT.
    """
    import pyarrow as pa

    from debias import storage

    from debias.curation import shards
    from debias.curation.codecs import encode_jpeg, pack_mask

    out = storage.absolute(str(out))
    rng = np.random.default_rng(seed)
    directions = [(np.cos(a), np.sin(a)) for a in np.linspace(0, 2 * np.pi, num_classes, endpoint=False)]
    colours = rng.integers(40, 216, size=(num_classes, 3))
    side = size_px // 4
    rows = []
    for split, count in splits.items():
        for i in range(count):
            label = int(rng.integers(num_classes))
            scene = label if rng.random() < bias else int(rng.integers(num_classes))
            y0, x0 = rng.integers(side, size_px - 2 * side, size=2)
            speed = rng.uniform(0.5, 1.5)
            frames, masks = [], []
            for t in range(num_frames):
                image = np.empty((size_px, size_px, 3), np.uint8)
                image[:] = colours[scene]
                image += rng.integers(0, 12, size=image.shape, dtype=np.uint8)  # texture, so JPEG is not trivial
                dy, dx = (speed * t * d for d in directions[label][::-1])
                y, x = int(np.clip(y0 + dy, 0, size_px - side)), int(np.clip(x0 + dx, 0, size_px - side))
                mask = np.zeros((size_px, size_px), bool)
                mask[y:y + side, x:x + side] = True
                image[mask] = 255 - colours[scene]
                frames.append(encode_jpeg(image, 90))
                masks.append(mask)
            probs = np.full(num_classes, 0.1 / max(num_classes - 1, 1), np.float32)
            probs[scene] = 0.9
            rows.append({
                "schema_version": shards.SCHEMA_VERSION, "video_id": f"{split}_{i:05d}", "clip_index": 0,
                "label": f"class_{label}", "label_id": label, "split": split, "source_path": "", "fps": 8.0,
                "frame_indices": list(range(num_frames)), "padded": False, "height": size_px, "width": size_px, "frames": frames,
                "human_masks": [pack_mask(m) for m in masks], "mask_coverage": [float(m.mean()) for m in masks],
                "person_frac": 1.0, "mask_source": "pattern", "scene_id": scene, "scene_probs": probs.tolist(),
                "scene_source": "pattern"})
    attempt, resumed = shards.start_attempt(out, f"pattern-{seed}", None, rows_per_video=1)
    for start in range(0, len(rows), rows_per_file):
        table = pa.Table.from_pylist(rows[start:start + rows_per_file], schema=shards.SHARD_SCHEMA)
        shards.write_parquet(storage.join(attempt.folder("shards"), f"part-{start // rows_per_file:05d}.parquet"), table)
    shards.commit(attempt, resumed, shards.ERROR_SCHEMA.empty_table(), [f"class_{k}" for k in range(num_classes)],
                  [f"scene_{k}" for k in range(num_classes)],
                  {"videos_in": len(rows), "videos_ok": len(rows), "ok_by_split": splits, "source": "pattern",
                   # what a preprocess summary's config says of the frames (runs.preprocessing reads decode)
                   "config": {"decode": {"sampling": "uniform", "num_frames": num_frames, "short_side_px": size_px,
                                         "crop_px": size_px, "jpeg_quality": 90},
                              "pattern": {"num_classes": num_classes, "bias": bias, "seed": seed}}})
    return out
