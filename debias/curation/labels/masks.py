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
from typing import Callable

import cv2
import numpy as np
import pandas as pd

from debias.curation.curate import DecodeConfig, PreprocessConfig, apply_per_row
from debias.curation.labels.models import BoxSegmenter, PersonDetector, label_device, load_detector, load_sam
from debias.curation.labels.config import LabelsConfig
from debias.curation.codecs import pack_masks
from debias.curation.labels.rows import decode_rows, decode_rows_on, run_by_size, with_columns
from debias.curation.sources import read_annotation
from debias.curation.video import resize_crop, sample_uniform, temporal_median, thread_stream


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
