"""Human-mask providers: Ray Data steps that add per-frame person masks to decoded rows.

Every provider reads a row's stored frames (JPEG) or its dataset's annotations and writes the same
columns: human_masks (bit-packed bool per frame, at the stored resolution), mask_coverage (share of
person pixels per frame), person_frac (share of frames with a person) and mask_source (who made
them). Providers:

- `SamMasks` (`sam`): a torchvision COCO detector finds people; each person box prompts SAM
  (segment-anything); a frame's mask is the union of its people's masks.
- `MotionMasks` (`motion`, weight-free): what moves over the clip's (shake-corrected) temporal
  median, grown by a colour model of the moving pixels.
- `AnnotationMasks` (`annotations`): a dataset's own per-frame ground truth.
- `NoMasks` (`none`): empty masks, so the mask loss skips the clip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

import cv2
import numpy as np
import pandas as pd
import torch

from debias.curation.curate import DecodeConfig, PreprocessConfig, apply_per_row
from debias.curation.labels.models import BoxSegmenter, PersonDetector, label_device, load_detector, load_sam
from debias.curation.labels.config import LabelsConfig
from debias.curation.shards import ERROR_COLUMNS, decode_jpeg, decode_jpegs_on, pack_masks
from debias.curation.sources import read_annotation
from debias.curation.video import VideoError, resize_crop, sample_uniform, temporal_median, thread_stream

Clip = TypeVar("Clip")

MASK_COLUMNS = {"human_masks": [], "mask_coverage": [], "person_frac": 0.0, "mask_source": ""}


def mask_columns(masks: np.ndarray | list[np.ndarray], source: str) -> dict:
    """The shard columns for one row's (T, H, W) bool masks (or a list of (H, W) ones)."""
    masks = np.asarray(masks, dtype=bool)
    if not len(masks):
        return {"human_masks": [], "mask_coverage": [], "person_frac": 0.0, "mask_source": source}
    # the whole clip at once: per-frame calls were a tenth of a motion mask's cost under sampling=paper
    coverage = np.count_nonzero(masks.reshape(len(masks), -1), axis=1) / masks[0].size  # mean() sums in float64
    return {"human_masks": pack_masks(masks), "mask_coverage": coverage.tolist(),
            "person_frac": float((coverage > 0).mean()), "mask_source": source}


def _decode_each(batch: pd.DataFrame, stage: str, decode: Callable[[list[bytes]], Clip]) -> tuple[list[Clip | None], pd.DataFrame]:
    """`decode` every good row's JPEG frames; a row whose decode raises becomes an error row. Returns
    the clips (None for rows in error) and the updated error columns."""
    errors = batch[ERROR_COLUMNS].copy()
    clips: list[Clip | None] = []
    for i, row in enumerate(batch.itertuples(index=False)):
        if row.error:
            clips.append(None)
            continue
        try:
            clips.append(decode(list(row.frames)))
        except (VideoError, ValueError) as e:
            clips.append(None)
            errors.iloc[i] = [f"{stage} for {row.video_id}: {e}", f"{stage}_failed", stage]
    return clips, errors


def decode_rows(batch: pd.DataFrame, stage: str, max_frames: int = 0,
                half_size: bool = False) -> tuple[list[np.ndarray | None], pd.DataFrame]:
    """Decode every good row's JPEG frames on the CPU to (T, H, W, 3) uint8 RGB, or only `max_frames` of
    them spread evenly over the row when that is fewer (a step that needs a clip's background, not each
    frame), at half size with `half_size` (ceil(H/2), ceil(W/2)); a corrupt frame makes the row an error
    row. A batch with `pixels` (`make_decode_fn(keep_pixels=True)`: the frames before JPEG) is read from
    them instead, with no decode. Returns the clips (None for rows in error) and the error columns."""
    def picked(n: int) -> np.ndarray | slice:
        return sample_uniform(n, max_frames) if 0 < max_frames < n else slice(None)

    if "pixels" in batch.columns:
        def half(clip: np.ndarray) -> np.ndarray:
            t, h, w, _ = clip.shape
            if h % 2:  # odd: frame by frame, to ceil(H/2) as libjpeg's reduced decode gives
                return np.stack([cv2.resize(f, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA) for f in clip])
            # even: the clip as one tall image, one call (2x2 areas never straddle two frames)
            return cv2.resize(clip.reshape(t * h, w, 3), ((w + 1) // 2, t * h // 2),
                              interpolation=cv2.INTER_AREA).reshape(t, h // 2, (w + 1) // 2, 3)
        # the two columns themselves, not itertuples: per call, that and a copy of the error columns cost
        # more than a scene label's own work (pandas 3, one-row batches inside a `Decoder`)
        clips = [None if error else (half(pixels[picked(len(pixels))]) if half_size else pixels[picked(len(pixels))])
                 for pixels, error in zip(batch["pixels"], batch["error"])]
        return clips, batch[ERROR_COLUMNS]

    def decode(jpegs: list[bytes]) -> np.ndarray:
        idx = picked(len(jpegs))
        chosen = jpegs[idx] if isinstance(idx, slice) else [jpegs[i] for i in idx]
        return np.stack([decode_jpeg(j, half_size) for j in chosen])
    return _decode_each(batch, stage, decode)


def _stack_frames(frames: list[torch.Tensor]) -> torch.Tensor:
    if not frames or any(f.shape != frames[0].shape for f in frames):
        raise ValueError(f"a clip needs frames of one size, got {[tuple(f.shape) for f in frames]}")
    return torch.stack(frames)


def decode_rows_on(device: torch.device, batch: pd.DataFrame, stage: str) -> tuple[list[torch.Tensor | None], pd.DataFrame]:
    """Decode every good row's JPEG frames onto `device` as (T, 3, H, W) uint8, as `decode_rows` does
    on the CPU (same error rows). The frames of all good rows go to one `decode_jpegs_on` call, so a
    GPU decodes them as one nvJPEG batch; only when that call fails are the rows decoded one by one,
    to find the corrupt frame's row."""
    jpegs = [f for row in batch.itertuples(index=False) if not row.error for f in row.frames]
    try:
        decoded = iter(decode_jpegs_on(device, jpegs) if jpegs else [])
    except (VideoError, ValueError):
        return _decode_each(batch, stage, lambda row_jpegs: _stack_frames(decode_jpegs_on(device, row_jpegs)))
    # each good row takes its own frames from the batch's, in order
    return _decode_each(batch, stage, lambda row_jpegs: _stack_frames([next(decoded) for _ in row_jpegs]))


def run_by_size(clips: list[torch.Tensor | None], model: Callable[[torch.Tensor], np.ndarray]) -> list[np.ndarray | None]:
    """Run `model` ((N, 3, H, W) uint8 -> N results) once per frame size over the frames of all clips of
    that size; returns each clip's slice of the results (None for None)."""
    sizes = {tuple(c.shape[-2:]) for c in clips if c is not None}
    results: list[np.ndarray | None] = [None] * len(clips)
    for size in sizes:
        idx = [i for i, c in enumerate(clips) if c is not None and tuple(c.shape[-2:]) == size]
        out, start = model(torch.cat([clips[i] for i in idx])), 0
        for i in idx:
            results[i] = out[start : start + len(clips[i])]
            start += len(clips[i])
    return results


def with_columns(batch: pd.DataFrame, results: list[dict | None], errors: pd.DataFrame, empty: dict) -> pd.DataFrame:
    """`batch` with a step's columns (`empty`'s keys: each row's result, or the default for None) and its
    error columns. A step only ever turns good rows into error rows, so the error columns are written
    only when `errors` says so (each column set costs ~0.1 ms in pandas 3, per call)."""
    out = batch.assign(**{key: [r[key] if r is not None else default for r in results] for key, default in empty.items()})
    if (errors["error"].to_numpy() != batch["error"].to_numpy()).any():
        out[ERROR_COLUMNS] = errors.to_numpy()
    return out


# --- detector + SAM ------------------------------------------------------------------------------

class SamMasks:
    """Detector + SAM person masks. Loads both models once per actor (GPU when the actor has one).

    Reads: frames, video_id, error. Writes: human_masks, mask_coverage, person_frac, mask_source = "sam".
    """

    source = "sam"

    def __init__(self, detector_path: str, sam_path: str, labels: LabelsConfig) -> None:
        self.device = device = label_device()
        detector = load_detector(detector_path, labels.detector, labels.detector_min_size_px,
                                 min(labels.person_score_min, 0.05))
        self.detect = PersonDetector(detector, labels, device)
        self.segment = BoxSegmenter(load_sam(sam_path), labels, device)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        with thread_stream(self.device):  # concurrent calls of this actor overlap (preprocess: 2 per actor)
            clips, errors = decode_rows_on(self.device, batch, "masks")
            masks = run_by_size(clips, lambda images: self.segment(images, self.detect(images)))
        results = [None if m is None else mask_columns(m, self.source) for m in masks]
        return with_columns(batch, results, errors, MASK_COLUMNS)


# --- weight-free: motion foreground --------------------------------------------------------------

MOTION_MODEL_FRAMES = 32  # frames spread over the clip that the motion and the colour model are read from
SHIFT_MIN_PX = 64  # frames at least this size estimate their shift at half size: half the cost at 112 px


def _grey(frames: np.ndarray, scale: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, H/scale, W/scale) float32 grey, for phase correlation."""
    t, h, w, _ = frames.shape
    grey = cv2.cvtColor(frames.reshape(t * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(t, h, w)
    if scale > 1:  # one call for the clip: INTER_AREA over a stack of frames whose height divides by scale
        rows = h // scale * scale
        grey = cv2.resize(grey[:, :rows].reshape(t * rows, w), (w // scale, t * rows // scale),
                          interpolation=cv2.INTER_AREA).reshape(t, rows // scale, w // scale)
    return grey.astype(np.float32)


def _stabilise(clip: np.ndarray) -> np.ndarray:
    """Undo camera shake: shift each frame onto the clip's temporal median (phase correlation, to a
    fraction of a pixel); a frame that moved less than a tenth of a pixel is kept as it is."""
    scale = 2 if min(clip.shape[1:3]) >= SHIFT_MIN_PX else 1
    reference = _grey(temporal_median(clip)[None], scale)[0]
    out = clip.copy()
    for i, grey in enumerate(_grey(clip, scale)):
        (dx, dy), _response = cv2.phaseCorrelate(reference, grey)
        if abs(dx) > 0.05 or abs(dy) > 0.05:
            shift = np.float32([[1, 0, -scale * dx], [0, 1, -scale * dy]])
            out[i] = cv2.warpAffine(clip[i], shift, (clip.shape[2], clip.shape[1]), borderMode=cv2.BORDER_REFLECT)
    return out


def _spread(masks: np.ndarray, axis: int, combine: np.ufunc) -> np.ndarray:
    """Each pixel combined with its two neighbours along `axis` (those that exist: outside the frame
    counts for nothing)."""
    out = masks.copy()
    ahead, behind = [slice(None)] * masks.ndim, [slice(None)] * masks.ndim
    ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
    combine(out[tuple(ahead)], masks[tuple(behind)], out=out[tuple(ahead)])
    combine(out[tuple(behind)], masks[tuple(ahead)], out=out[tuple(behind)])
    return out


def open_3x3(masks: np.ndarray) -> np.ndarray:
    """(T, H, W) bool -> the morphological opening of each frame by a 3x3 square, as
    `cv2.morphologyEx(MORPH_OPEN)` gives it, over the whole clip at once (cv2 takes a frame a call)."""
    eroded = _spread(_spread(masks, 1, np.logical_and), 2, np.logical_and)
    return _spread(_spread(eroded, 1, np.logical_or), 2, np.logical_or)


def _moving(steady: np.ndarray, background: np.ndarray, threshold: float, tolerance_px: int) -> np.ndarray:
    """(T, H, W, 3) frames and their (H, W, 3) background -> (T, H, W) bool: pixels farther than
    `threshold` (max over RGB) from every background value within `tolerance_px` of them (0: from the
    background pixel itself), cleaned by a 3x3 opening. A tolerance forgives the shake left after
    alignment and the edges of a background it blurred."""
    t, h, w, _ = steady.shape
    square = np.ones((2 * tolerance_px + 1,) * 2, np.uint8)
    brightest, darkest = (np.broadcast_to(cv2.dilate(background, square), steady.shape).reshape(t * h, w, 3),
                          np.broadcast_to(cv2.erode(background, square), steady.shape).reshape(t * h, w, 3))
    frames = steady.reshape(t * h, w, 3)
    # saturating uint8 differences on the clip as one image: no int16 copy
    diff = cv2.max(cv2.subtract(frames, np.ascontiguousarray(brightest)),
                   cv2.subtract(np.ascontiguousarray(darkest), frames)).reshape(steady.shape)
    return open_3x3(np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2]) > threshold)


COLOUR_BITS = 3  # bits kept per channel in the colour model: 8 bins each, 512 colours


def _colour_index(frames: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) colour bin in [0, 512), computed on bytes rather than on an int32 copy of
    the whole clip."""
    q = frames >> (8 - COLOUR_BITS)
    return ((q[..., 0].astype(np.uint16) << COLOUR_BITS | q[..., 1]) << COLOUR_BITS) | q[..., 2]


def motion_masks(clip: np.ndarray, threshold: float, colour_ratio: float, tolerance_px: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, H, W) bool person masks without a model.

    1. Moving pixels, on `MOTION_MODEL_FRAMES` frames spread over the clip (all of a short one): after
       undoing camera shake, pixels farther than `threshold` from the clip's per-pixel temporal median
       background (`_moving`, with `tolerance_px`).
    2. Colour model: the masks are every pixel of every frame whose colour is `colour_ratio` times
       likelier among the moving pixels than among the never-moving ones (8 bins per channel), so a
       person's parts that stay still, and so vanish into the median, are found too. Only this step
       reads every frame: under sampling=paper a clip holds hundreds, and 32 spread over it tell which
       colours move (step 1 on all of them made the whole step 2-3x as costly, profiled on the real
       clips at 112 px).
    A static person or a moving background defeats it (measured in docs/benchmarks.md)."""
    model = clip[sample_uniform(len(clip), MOTION_MODEL_FRAMES)] if len(clip) > MOTION_MODEL_FRAMES else clip
    steady = _stabilise(model)
    moving = _moving(steady, temporal_median(steady), threshold, tolerance_px)
    if not moving.any():
        return np.zeros(clip.shape[:3], bool)
    colours = 1 << (3 * COLOUR_BITS)
    steady_idx = _colour_index(steady)
    never_moving = ~cv2.dilate(moving.any(axis=0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    person = np.bincount(steady_idx[moving], minlength=colours) + 0.5
    scene = np.bincount(steady_idx[:, never_moving].ravel(), minlength=colours) + 0.5
    likelier = person / person.sum() > colour_ratio * scene / scene.sum()
    return likelier[_colour_index(clip)]


MOTION_HALF_MIN_PX = 64  # stored frames at least this size are masked at half size (`MotionMasks`)
# Masked frames at least this size read motion with a pixel of tolerance. The masks' IoU without -> with
# it on benchmarks/label_quality.py (--per-class 20) by stored size (masked at half): 112 px 0.47 -> 0.65,
# 96 px 0.45 -> 0.56, 84 px 0.37 -> 0.37, 70 px 0.43 -> 0.38, 32 px 0.37 -> 0.26: on small frames
# the person is a few pixels wide and a tolerance loses it.
MOTION_TOLERANCE_MIN_PX = 48


class MotionMasks:
    """Weight-free masks: moving pixels against the clip's temporal median background.

    Reads: frames, video_id, error. Writes: human_masks, mask_coverage, person_frac, mask_source = "motion".
    """

    source = "motion"
    reads_pixels = True  # inside a `Decoder`: the frames before JPEG

    def __init__(self, threshold: float, colour_ratio: float) -> None:
        self.threshold, self.colour_ratio = threshold, colour_ratio

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        good = batch[batch["error"] == ""]
        # Frames of at least MOTION_HALF_MIN_PX are masked at half size and the masks scaled back: a
        # quarter of the pixels for a blob-level mask, and a 3x3 opening at half size cleans like a 6x6.
        half = bool(len(good)) and int(min(good["height"].min(), good["width"].min())) >= MOTION_HALF_MIN_PX
        clips, errors = decode_rows(batch, "masks", half_size=half)
        results = []
        for c, height, width in zip(clips, batch["height"], batch["width"]):
            if c is None:
                results.append(None)
                continue
            tolerance_px = 1 if min(c.shape[1:3]) >= MOTION_TOLERANCE_MIN_PX else 0
            masks = motion_masks(c, self.threshold, self.colour_ratio, tolerance_px)
            if half:  # back to full size, the clip as one tall image (one call: np.repeat cost 12 us a frame)
                t, h, w = masks.shape
                masks = cv2.resize(masks.view(np.uint8).reshape(t * h, w), (2 * w, 2 * t * h),
                                   interpolation=cv2.INTER_NEAREST).reshape(t, 2 * h, 2 * w)[:, :height, :width].view(bool)
            results.append(mask_columns(masks, self.source))
        return with_columns(batch, results, errors, MASK_COLUMNS)


# --- dataset annotations and none ----------------------------------------------------------------

class AnnotationMasks:
    """Human masks from a dataset's own per-frame annotations, mapped onto the stored pixels.

    Reads: youtube_id, video_id, frame_indices, error. Writes: human_masks, mask_coverage, person_frac, mask_source.
    """

    source = "annotations"

    def __init__(self, annotations_dir: str, decode: DecodeConfig) -> None:
        self.dir = annotations_dir
        self.decode = decode

    def _one(self, row: pd.Series) -> dict:
        masks, _scene = read_annotation(self.dir, row.youtube_id or row.video_id)  # named by the manifest's id
        picked = masks[np.asarray(row.frame_indices, dtype=np.int64)]
        stored = [resize_crop(m.astype(np.uint8), self.decode.short_side_px, self.decode.crop_px, nearest=True) > 0
                  for m in picked]
        return mask_columns(stored, self.source)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return apply_per_row(batch, self._one, "masks", MASK_COLUMNS)


class NoMasks:
    """Empty masks (no person found): the mask loss skips such clips. Reads: frame_indices, height,
    width, error. Writes: human_masks, mask_coverage, person_frac, mask_source = "none"."""

    source = "none"

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        def one(row: pd.Series) -> dict:
            return mask_columns([np.zeros((row.height, row.width), bool)] * len(row.frame_indices), self.source)
        return apply_per_row(batch, one, "masks", MASK_COLUMNS)


def mask_step(cfg: PreprocessConfig, provider: str, weights: dict[str, Path]) -> tuple[Callable, tuple]:
    """(step class, constructor args) for a resolved provider (see `weights.resolve_providers`)."""
    if provider == "sam":
        return SamMasks, (str(weights["detector"]), str(weights["sam"]), cfg.labels)
    if provider == "motion":
        return MotionMasks, (cfg.labels.motion_threshold, cfg.labels.motion_colour_ratio)
    if provider == "annotations":
        return AnnotationMasks, (str(cfg.annotations_dir()), cfg.decode)
    return NoMasks, ()
