"""The counterfactual clips of the field's scene-bias protocols, as pure functions over numpy arrays.

Shapes: a clip is (T, H, W, 3) uint8 RGB, its person masks (T, H, W) bool, a background image
(H, W, 3) uint8. Every builder returns a new clip of the input's shape.

- `scuba`: the people kept, everything else one static image, pasted hard (SCUBA, Li et al. ICCV 2023:
  `frame * mask + background * (1 - mask)`);
- `scufo`: one frame of a SCUBA clip repeated (SCUFO: appearance without motion);
- `background_only`: the people removed, the hole filled (HAT, Chung et al. NeurIPS 2022, inpaints;
  here a mean or blurred fill of the union of the clip's masks, so no moving silhouette is left);
- `human_only`: everything but the people set to one mean colour (HAT);
- `action_swap`: the people of clip A on the background of clip B (its people filled), matched by
  relative time, from A's frames whose person coverage is inside the band (HAT: 5-50 %).

The quality gates (`GateConfig`: the Kinetics SCUBA rule and the swap band) return a reason string,
"" when a clip passes, so a dropped clip is always a row with its reason. Backgrounds are generated
sinusoidal stripes (after StillMix's benchmark_synthesis) or a user's folder of images, chosen
reproducibly per clip from a seed (`background_rng`, `choose_image`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from debias.curation.labels.fill import Fill, fill_people
from debias.training.clips import video_key
from debias.config import check
from debias.training.models import KINETICS_MEAN
from debias.curation.codecs import decode_jpeg, unpack_mask

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Human-only fills with the colour the model normalises to zero (its input mean), as HAT fills with the
# dataset's mean colour: the filled pixels carry no signal into the first convolution.
MEAN_RGB = tuple(round(255 * m) for m in KINETICS_MEAN)


@dataclass
class GateConfig:
    """Which clips a protocol keeps, with the papers' values as defaults."""

    # Kinetics SCUBA (StillMix): a video is kept only if at least this share of its frames ...
    scuba_min_frame_share: float = 0.9
    # ... have a person mask covering at least this share of the frame.
    scuba_min_coverage: float = 0.1
    # HAT action-swap: only frames where the person covers this band of the image are used.
    swap_min_coverage: float = 0.05
    swap_max_coverage: float = 0.5

    def __post_init__(self) -> None:
        for key in ("scuba_min_frame_share", "scuba_min_coverage", "swap_min_coverage", "swap_max_coverage"):
            check(0.0 <= getattr(self, key) <= 1.0, key, "must be in [0, 1]")
        check(self.swap_min_coverage < self.swap_max_coverage, "swap_min_coverage",
              f"must be below swap_max_coverage ({self.swap_max_coverage})")


def coverage(masks: np.ndarray) -> np.ndarray:
    """(T, H, W) bool -> (T,) share of each frame's pixels masked as person."""
    return masks.reshape(len(masks), -1).mean(axis=1)


def scuba_gate(masks: np.ndarray, cfg: GateConfig) -> str:
    """The Kinetics SCUBA rule on a clip's masks (T, H, W): "" when kept, else the reason."""
    share = float((coverage(masks) >= cfg.scuba_min_coverage).mean())
    if share >= cfg.scuba_min_frame_share:
        return ""
    return (f"scuba_rule: {share:.0%} of frames have a person mask covering >= {cfg.scuba_min_coverage:.0%} "
            f"of the frame (needs {cfg.scuba_min_frame_share:.0%})")


def person_gate(masks: np.ndarray) -> str:
    """Background-only and human-only need a person: "" when the clip has a mask pixel, else the reason."""
    return "" if masks.any() else "no_person: the clip has no person mask pixel"


def swap_frames(masks: np.ndarray, cfg: GateConfig) -> np.ndarray:
    """(T, H, W) bool -> (T,) bool: the frames whose person coverage is inside the action-swap band."""
    c = coverage(masks)
    return (c >= cfg.swap_min_coverage) & (c <= cfg.swap_max_coverage)


def swap_gate(masks: np.ndarray, cfg: GateConfig) -> str:
    """"" when at least one frame is inside the action-swap band, else the reason."""
    if swap_frames(masks, cfg).any():
        return ""
    return (f"swap_band: no frame with person coverage in [{cfg.swap_min_coverage:.0%}, "
            f"{cfg.swap_max_coverage:.0%}] (max {coverage(masks).max():.1%})")


# --- the clips ---------------------------------------------------------------------------------------

def centre_clip(jpegs: list[bytes], packed: list[bytes], height: int, width: int, clip_len: int,
                crop_px: int) -> tuple[np.ndarray, np.ndarray]:
    """A shard row's centre window of `clip_len` frames (the last repeated when short) and its centre
    crop: frames (clip_len, crop_px, crop_px, 3) uint8 RGB and masks (clip_len, crop_px, crop_px) bool
    (smaller sides when the stored frames are smaller than crop_px)."""
    start = max(0, (len(jpegs) - clip_len) // 2)
    idx = np.minimum(np.arange(start, start + clip_len), len(jpegs) - 1)
    top, left = max(0, (height - crop_px) // 2), max(0, (width - crop_px) // 2)
    window = (slice(None), slice(top, top + crop_px), slice(left, left + crop_px))
    frames = np.stack([decode_jpeg(jpegs[j]) for j in idx])[window]
    masks = np.stack([unpack_mask(packed[j], height, width) for j in idx])[window]
    return np.ascontiguousarray(frames), np.ascontiguousarray(masks)


def scuba(frames: np.ndarray, masks: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The people of `frames` (T, H, W, 3) on the static `background` (H, W, 3): a hard paste."""
    return np.where(masks[..., None], frames, background[None])


def scufo(clip: np.ndarray, frame: int | None = None) -> np.ndarray:
    """One frame of `clip` (T, H, W, 3) repeated T times; default the middle frame."""
    t = len(clip) // 2 if frame is None else frame
    return np.repeat(clip[t:t + 1], len(clip), axis=0)


def tube(masks: np.ndarray) -> np.ndarray:
    """(T, H, W) -> the union of the clip's masks, in every frame."""
    return np.broadcast_to(masks.any(axis=0, keepdims=True), masks.shape)


def background_only(frames: np.ndarray, masks: np.ndarray, fill: Fill, rng: np.random.Generator) -> np.ndarray:
    """The clip with the union of its masks filled in every frame (`fill_people`): scene, no person."""
    return fill_people(frames, tube(masks), fill, rng)


def human_only(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The people kept, every other pixel MEAN_RGB."""
    return np.where(masks[..., None], frames, np.asarray(MEAN_RGB, np.uint8))


def action_swap(frames_a: np.ndarray, masks_a: np.ndarray, background_b: np.ndarray, cfg: GateConfig) -> np.ndarray:
    """A's people on B's background (`background_only` of B; both (T, H, W, 3)), by relative time: the
    frames of A inside the coverage band, spread evenly over the T output frames, each on B's frame at
    the same position. Needs `swap_gate(masks_a) == ""`."""
    usable = np.flatnonzero(swap_frames(masks_a, cfg))
    pick = usable[np.linspace(0, len(usable) - 1, len(frames_a)).round().astype(int)]
    return np.where(masks_a[pick][..., None], frames_a[pick], background_b[pick])


# --- backgrounds -------------------------------------------------------------------------------------

def background_rng(seed: int, video_id: str, clip_index: int, stream: int, copy: int) -> np.random.Generator:
    """The generator for one random choice of one clip (`stream` >= 0: which choice, e.g. a background
    kind; `copy`: which of its copies): the same for a clip whatever else is evaluated, and in any order."""
    return np.random.default_rng([seed, video_key(video_id) & (2**63 - 1), clip_index, stream, copy])


def stripes(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A generated SCUBA background (H, W, 3) uint8: bands of the inverse colour on a random plain colour,
    following a sinusoid, at a random orientation. The ranges are StillMix's (benchmark_synthesis
    stripe_img, for a 256 px crop: half band width 5-20 px, band spacing 3-5 band widths, wavelength
    4-1004 px, amplitude 10-110 px), scaled to the frame."""
    scale = max(height, width) / 256
    colour = rng.random(3)
    half_width = (5 + 15 * rng.random()) * scale
    spacing = (3 + 2 * rng.random()) * half_width
    omega = 2 * np.pi / ((4 + 1000 * rng.random()) * scale)
    phase = rng.uniform(-np.pi, np.pi)
    amplitude = (10 + 100 * rng.random()) * scale
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[:height, :width].astype(np.float64)
    u = x * np.cos(angle) + y * np.sin(angle)  # along the bands
    v = -x * np.sin(angle) + y * np.cos(angle)  # across them
    on = np.mod(v - amplitude * np.sin(omega * u + phase), spacing) < 2 * half_width
    image = np.where(on[..., None], 1 - colour, colour)
    return (image * 255).round().astype(np.uint8)


def list_images(folder: str) -> list[tuple[str, str]]:
    """(path, class) of every image below `folder`, sorted: the class is the first folder below it (""
    for an image directly in it). Images in class folders named as the actions are never a background
    of a clip of that action."""
    from debias import storage

    root = storage.absolute(folder)
    out = []
    for path in storage.find_files(root):
        rel = path[len(root):].lstrip("/" + os.sep).replace(os.sep, "/")
        if rel.lower().endswith(IMAGE_EXTENSIONS) and not storage.name(path).startswith("."):
            out.append((path, rel.split("/")[0] if "/" in rel else ""))
    return sorted(out)


def choose_image(images: list[tuple[str, str]], label: str, rng: np.random.Generator) -> str:
    """One image of `images` (`list_images`) for a clip of action `label`, never one of its own class;
    ValueError when every image is of that class."""
    allowed = [p for p, c in images if not (label and c == label)]
    if not allowed:
        raise ValueError(f"no background image outside class '{label}' ({len(images)} images, all of it)")
    return allowed[int(rng.integers(len(allowed)))]


def read_image(path: str, height: int, width: int) -> np.ndarray:
    """An image file (local or a URI) as (height, width, 3) uint8 RGB, resized to the frame as StillMix
    does (no crop); ValueError naming the file when it is not an image."""
    from debias import storage

    image = cv2.imdecode(np.frombuffer(storage.read_bytes(path), np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image (background)")
    return cv2.cvtColor(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
