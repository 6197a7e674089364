"""Synthetic scene-bias benchmark: real H.264 videos where the scene is a shortcut.

A stick figure performs an action that is visible only in its motion (every action starts from the
same neutral pose, and the phase and speed are random); it stands in front of a textured scene with
camera jitter. Each action has a home: a group of `scenes_per_action` scenes. In the `train` and `val`
splits an action appears in one of its home scenes with probability `bias` (otherwise in a scene drawn
uniformly from all); in the `ood_val` and `ood_test` splits the scene is drawn independently of the
action, so a model that learned the scene instead of the motion falls to chance there. `ood_val` is for
choices (weights, checkpoints, defaults), `ood_test` for claims (debias/training/selection.py).

The scene carries detail the action does not imply: a scene is a layout (a horizon at its own height
splitting two patterns, and a solid shape at its own place) and textures (pattern, period), and with
`palette: group` the scenes of one home share their colours, the mean colour of each rescaled to the
group's (colour-matched variants: only texture and layout tell them apart). A scene adversary then has
to learn more than the action to name the scene, and a model can follow the scene shortcut by colour
alone, by texture alone, or both.

A second task (`target`: other actions, a bulkier figure, other scenes, no bias) is the transfer target.

Layout written under OUT, per task (`source`, `target`):
    manifest.csv          Kinetics-style: label,youtube_id,time_start,time_end,split
    videos/<id>.mp4       H.264, yuv420p
    annotations/<id>.npz  ground truth: masks (T, H, W/8) bit-packed per frame, scene_id, frame_size
    annotations/scenes.json  scene names (index = scene id); scene_homes.json: each scene's home action
    actions.json: action names
and OUT/benchmark.json with the config and counts.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import cv2
import numpy as np
from tqdm import tqdm

from debias import storage
from debias.config import PathStr, check, to_dict
from debias.curation.video import write_mp4

SPLIT_IDS = {"train": 0, "val": 1, "ood_test": 2, "test": 3, "ood_val": 4}
MANIFEST_COLUMNS = ["label", "youtube_id", "time_start", "time_end", "split"]


@dataclass
class SynthConfig:
    """What the benchmark looks like; sizes are per action class."""

    out: PathStr = "out/synth"
    seed: int = 0  # the draw: videos and the scenes' looks
    bias: float = 0.9  # P(action shown in one of its home scenes) in train/val; ood_val/ood_test draw scenes uniformly
    scenes_per_action: int = 3  # the size of each action's home group of scenes
    # group: the scenes of one home share their palette and mean colour (they differ in texture and
    # layout only); scene: every scene has colours of its own
    palette: Literal["group", "scene"] = "group"
    train_per_class: int = 100
    val_per_class: int = 25
    ood_val_per_class: int = 25  # unbiased split for every choice (sweeps, checkpoints, defaults)
    ood_test_per_class: int = 25  # unbiased split the claims are read from
    target_train_per_class: int = 30
    target_test_per_class: int = 20
    frame_size_px: int = 48
    num_frames: int = 16
    fps: float = 8.0
    jitter_px: int = 2  # camera shake, max offset per axis
    crf: int = 18

    def __post_init__(self) -> None:
        check(0.0 <= self.bias <= 1.0, "bias", f"must be in [0, 1], got {self.bias}")
        check(self.scenes_per_action >= 1, "scenes_per_action", "must be >= 1")
        check(self.frame_size_px >= 32 and self.frame_size_px % 2 == 0, "frame_size_px", "must be even and >= 32")
        check(self.num_frames >= 4, "num_frames", "must be >= 4")
        check(self.fps > 0, "fps", "must be > 0")
        check(self.jitter_px >= 0, "jitter_px", "must be >= 0")
        for name in ("train_per_class", "val_per_class", "ood_val_per_class", "ood_test_per_class",
                     "target_train_per_class", "target_test_per_class"):
            check(getattr(self, name) >= 0, name, "must be >= 0")


# ---------------------------------------------------------------------------------------------
# Figure and poses. A pose is a dict of joint angles (radians, 0 = pointing down) and offsets in
# units of the figure height. `t` runs over [0, 1] across the clip; `cycles` (speed) is drawn
# per video so that no single frame gives the action away.

Pose = dict[str, float]
NEUTRAL: Pose = {"dx": 0.0, "dy": 0.0, "arm_l": 0.25, "arm_r": -0.25, "leg_l": 0.15, "leg_r": -0.15,
                 "squash": 1.0, "yaw": 1.0, "lean": 0.0}


def _osc(t: float, cycles: float) -> float:
    """0 at t=0 (every action starts from the neutral pose), oscillating in [0, 1]."""
    return 0.5 - 0.5 * math.cos(2 * math.pi * cycles * t)


def _walk(direction: float) -> Callable[[float, float], Pose]:
    def pose(t: float, cycles: float) -> Pose:
        swing = 0.5 * math.sin(2 * math.pi * cycles * 1.5 * t)
        return {**NEUTRAL, "dx": direction * 0.8 * t, "leg_l": swing, "leg_r": -swing,
                "arm_l": 0.25 - 0.6 * swing, "arm_r": -0.25 + 0.6 * swing}
    return pose


def _jump(t: float, cycles: float) -> Pose:
    hop = abs(math.sin(math.pi * cycles * t))
    return {**NEUTRAL, "dy": -0.45 * hop, "arm_l": 0.25 + 1.2 * hop, "arm_r": -0.25 - 1.2 * hop,
            "leg_l": 0.05, "leg_r": -0.05}


def _wave(t: float, cycles: float) -> Pose:
    up = min(1.0, 4 * t)  # raise the arm, then wave it
    wave = 0.5 * math.sin(2 * math.pi * cycles * 1.5 * t) * up
    return {**NEUTRAL, "arm_r": -0.25 - up * 2.3 + wave}


def _crouch(t: float, cycles: float) -> Pose:
    down = _osc(t, cycles)
    return {**NEUTRAL, "squash": 1.0 - 0.45 * down, "arm_l": 0.25 + 1.1 * down, "arm_r": -0.25 - 1.1 * down}


def _spin(t: float, cycles: float) -> Pose:
    return {**NEUTRAL, "yaw": math.cos(2 * math.pi * cycles * t), "arm_l": 0.25 + 1.3 * min(1.0, 5 * t),
            "arm_r": -0.25 - 1.3 * min(1.0, 5 * t)}


def _clap(t: float, cycles: float) -> Pose:
    c = _osc(t, 2 * cycles)
    return {**NEUTRAL, "arm_l": 0.25 + 1.2 * c, "arm_r": 0.25 + 1.2 * c}  # both arms swing to one side


def _kick(t: float, cycles: float) -> Pose:
    k = _osc(t, cycles)
    return {**NEUTRAL, "leg_r": -0.15 - 1.3 * k, "arm_l": 0.25 + 0.5 * k}


def _bow(t: float, cycles: float) -> Pose:
    return {**NEUTRAL, "lean": 1.0 * _osc(t, cycles)}


def _sidestep(t: float, cycles: float) -> Pose:
    s = math.sin(2 * math.pi * cycles * t)
    return {**NEUTRAL, "dx": 0.35 * s, "leg_l": 0.15 + 0.3 * abs(s), "leg_r": -0.15 - 0.3 * abs(s)}


def _arms_up(t: float, cycles: float) -> Pose:
    u = _osc(t, cycles)
    return {**NEUTRAL, "arm_l": 0.25 + 2.6 * u, "arm_r": -0.25 - 2.6 * u}


SOURCE_ACTIONS: dict[str, Callable[[float, float], Pose]] = {
    "walk_left": _walk(-1.0), "walk_right": _walk(1.0), "jump": _jump,
    "wave": _wave, "crouch": _crouch, "spin": _spin,
}
TARGET_ACTIONS: dict[str, Callable[[float, float], Pose]] = {
    "clap": _clap, "kick": _kick, "bow": _bow, "sidestep": _sidestep, "arms_up": _arms_up,
}


@dataclass(frozen=True)
class FigureStyle:
    height_frac: float  # figure height / frame height
    thickness_frac: float  # limb thickness / figure height
    head_frac: float  # head radius / figure height


SOURCE_FIGURE = FigureStyle(height_frac=0.45, thickness_frac=0.10, head_frac=0.10)
TARGET_FIGURE = FigureStyle(height_frac=0.50, thickness_frac=0.15, head_frac=0.13)
FIGURE_COLOURS = np.array([[250, 250, 250], [20, 20, 20], [230, 40, 40], [40, 200, 60], [40, 90, 240],
                           [250, 210, 30], [240, 120, 220], [30, 220, 220]], dtype=np.uint8)


def draw_figure(image: np.ndarray, mask: np.ndarray, pose: Pose, anchor_xy: tuple[float, float],
                style: FigureStyle, colour: tuple[int, int, int]) -> None:
    """Draw the stick figure in place; `anchor_xy` is the foot point of the neutral pose in pixels."""
    size = image.shape[0]
    h = style.height_frac * size
    thick = max(1, round(style.thickness_frac * h))
    leg_len, torso_len, arm_len = 0.45 * h * pose["squash"], 0.35 * h, 0.32 * h
    foot_x, foot_y = anchor_xy[0] + pose["dx"] * size * 0.5, anchor_xy[1] + pose["dy"] * h
    hip = np.array([foot_x, foot_y - leg_len])
    lean = pose["lean"]
    neck = hip + torso_len * np.array([math.sin(lean), -math.cos(lean)])
    head = neck + 0.12 * h * np.array([math.sin(lean), -math.cos(lean)]) * 2
    yaw = pose["yaw"]

    def limb(origin: np.ndarray, angle: float, length: float) -> np.ndarray:
        return origin + length * np.array([math.sin(angle) * yaw, math.cos(angle)])

    segments = [(hip, neck),
                (neck, limb(neck, pose["arm_l"], arm_len)), (neck, limb(neck, pose["arm_r"], arm_len)),
                (hip, limb(hip, pose["leg_l"], leg_len)), (hip, limb(hip, pose["leg_r"], leg_len))]
    radius = max(1, round(style.head_frac * h))
    for canvas, value in ((image, colour), (mask, 1)):
        for a, b in segments:
            cv2.line(canvas, tuple(int(round(v)) for v in a), tuple(int(round(v)) for v in b), value, thick)
        cv2.circle(canvas, tuple(int(round(v)) for v in head), radius, value, -1)


# ---------------------------------------------------------------------------------------------
# Scenes: a procedural picture per scene (layout + textures), larger than the frame so that the
# camera can shake over it.

PATTERNS = ("h_stripes", "v_stripes", "diagonal", "checker", "dots", "blobs")
SHAPES = ("rectangle", "disc")


@dataclass(frozen=True)
class SceneSpec:
    """One scene's look. Colours are RGB 0-255; fractions are of the texture's side."""

    colours: tuple[tuple[int, int, int], tuple[int, int, int]]  # the palette
    mean_colour: tuple[float, float, float] | None  # rescale the picture to this mean (colour-matched groups)
    upper: str  # pattern above the horizon
    lower: str  # pattern below it (colours swapped)
    period_px: float
    horizon_frac: float
    shape: str
    shape_box: tuple[float, float, float, float]  # x0, y0, x1, y1
    seed: int  # noise and blobs

    @property
    def name(self) -> str:
        return f"{self.upper}-{self.lower}-{self.shape}"


def _pattern(pattern: str, size_px: int, period: float, rng: np.random.Generator) -> np.ndarray:
    """Weights in [0, 1] of the palette's second colour, (size, size) float32."""
    yy, xx = np.mgrid[0:size_px, 0:size_px].astype(np.float32)
    if pattern == "h_stripes":
        w = np.sin(2 * np.pi * yy / period)
    elif pattern == "v_stripes":
        w = np.sin(2 * np.pi * xx / period)
    elif pattern == "diagonal":
        w = np.sin(2 * np.pi * (xx + yy) / period)
    elif pattern == "checker":
        w = np.sign(np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period))
    elif pattern == "dots":
        w = np.cos(2 * np.pi * xx / period) + np.cos(2 * np.pi * yy / period) - 1.0
    else:
        noise = rng.standard_normal((size_px // 6 + 2, size_px // 6 + 2)).astype(np.float32)
        w = cv2.resize(noise, (size_px, size_px), interpolation=cv2.INTER_CUBIC)
    return (np.clip(w, -1, 1) + 1) / 2


def scene_texture(spec: SceneSpec, size_px: int) -> np.ndarray:
    """The scene's picture, (size, size, 3) uint8 RGB."""
    rng = np.random.default_rng(spec.seed)
    c1, c2 = (np.array(c, np.float32) for c in spec.colours)
    horizon = int(round(spec.horizon_frac * size_px))
    w_up = _pattern(spec.upper, size_px, spec.period_px, rng)
    w_low = 1 - _pattern(spec.lower, size_px, spec.period_px * 1.5, rng)  # the ground: colours swapped, coarser
    w = np.where(np.arange(size_px)[:, None] < horizon, w_up, w_low)
    texture = (1 - w[..., None]) * c1 + w[..., None] * c2
    x0, y0, x1, y1 = (int(round(v * size_px)) for v in spec.shape_box)
    solid = tuple(float(v) for v in 0.25 * c1 + 0.75 * c2)
    if spec.shape == "rectangle":
        cv2.rectangle(texture, (x0, y0), (x1, y1), solid, -1)
    else:
        cv2.ellipse(texture, (((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0, y1 - y0), 0.0), solid, -1)
    if spec.mean_colour is not None:
        texture += np.array(spec.mean_colour, np.float32) - texture.mean(axis=(0, 1))
    return np.clip(texture + rng.normal(0, 6, texture.shape), 0, 255).astype(np.uint8)


def scene_specs(seed: int, task_id: int, num_groups: int, per_group: int, palette: str) -> list[SceneSpec]:
    """The scenes of a task: group g (home of action g) holds scene ids g * per_group ... + per_group - 1.
    Within a group the patterns and shapes differ scene by scene (a permutation of them), so no two
    scenes of a home share their texture and layout."""
    specs = []
    for g in range(num_groups):
        group_rng = np.random.default_rng([seed, task_id, g])
        group_colours = tuple(tuple(int(v) for v in c) for c in group_rng.integers(30, 226, size=(2, 3)))
        uppers, lowers = group_rng.permutation(len(PATTERNS)), group_rng.permutation(len(PATTERNS))
        for k in range(per_group):
            rng = np.random.default_rng([seed, task_id, g, k])
            own = tuple(tuple(int(v) for v in c) for c in rng.integers(30, 226, size=(2, 3)))
            colours = group_colours if palette == "group" else own
            x0, y0 = rng.uniform(0.05, 0.6, size=2)
            side = rng.uniform(0.15, 0.35, size=2)
            specs.append(SceneSpec(
                colours=colours,
                mean_colour=tuple(float(v) for v in (np.array(colours[0]) + np.array(colours[1])) / 2)
                if palette == "group" else None,
                upper=PATTERNS[uppers[k % len(PATTERNS)]], lower=PATTERNS[lowers[(k + 1) % len(PATTERNS)]],
                period_px=float(rng.uniform(6, 12)), horizon_frac=float(rng.uniform(0.3, 0.7)),
                shape=SHAPES[(g + k) % len(SHAPES)], shape_box=(x0, y0, x0 + side[0], y0 + side[1]),
                seed=int(rng.integers(2**31))))
    return specs


@dataclass(frozen=True)
class TaskSpec:
    name: str
    actions: dict[str, Callable[[float, float], Pose]]
    style: FigureStyle
    splits: dict[str, int]  # split -> videos per class
    biased_splits: tuple[str, ...]  # splits where the home scene is preferred


def render_video(action: Callable[[float, float], Pose], style: FigureStyle, texture: np.ndarray,
                 cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One clip: (T, S, S, 3) uint8 RGB frames and (T, S, S) bool human masks; `texture` is the scene's
    picture (`scene_texture`, side frame_size_px + 2 jitter_px + 16)."""
    size, j = cfg.frame_size_px, cfg.jitter_px
    # Per-video view into the texture, so two videos of one scene differ but share its look.
    ox, oy = rng.integers(0, 16, size=2)
    colour = tuple(int(c) for c in FIGURE_COLOURS[rng.integers(len(FIGURE_COLOURS))])
    cycles = rng.uniform(1.0, 1.6)
    travel_px = action(1.0, cycles)["dx"] * size * 0.5  # walkers cross the frame: keep the path inside
    anchor = (rng.uniform(0.35, 0.65) * size - travel_px / 2, rng.uniform(0.8, 0.92) * size)
    shake = np.cumsum(rng.integers(-1, 2, size=(cfg.num_frames, 2)), axis=0).clip(-j, j)
    frames = np.empty((cfg.num_frames, size, size, 3), np.uint8)
    masks = np.zeros((cfg.num_frames, size, size), np.uint8)
    for i in range(cfg.num_frames):
        t = i / (cfg.num_frames - 1)
        sx, sy = shake[i] + j
        frame = np.ascontiguousarray(texture[oy + sy : oy + sy + size, ox + sx : ox + sx + size])
        draw_figure(frame, masks[i], action(t, cycles), anchor, style, colour)
        frames[i] = frame
    return frames, masks.astype(bool)


def _task_specs(cfg: SynthConfig) -> list[TaskSpec]:
    return [
        TaskSpec("source", SOURCE_ACTIONS, SOURCE_FIGURE,
                 {"train": cfg.train_per_class, "val": cfg.val_per_class, "ood_val": cfg.ood_val_per_class,
                  "ood_test": cfg.ood_test_per_class}, ("train", "val")),
        TaskSpec("target", TARGET_ACTIONS, TARGET_FIGURE,
                 {"train": cfg.target_train_per_class, "test": cfg.target_test_per_class}, ()),
    ]


def generate(cfg: SynthConfig, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write the benchmark under `cfg.out`; returns the summary also saved as benchmark.json."""
    out = Path(cfg.out)
    specs = _task_specs(cfg)
    total = sum(len(s.actions) * n for s in specs for n in s.splits.values())
    done, counts = 0, {}
    for task_id, spec in enumerate(specs):
        task_dir = out / spec.name
        (task_dir / "videos").mkdir(parents=True, exist_ok=True)
        (task_dir / "annotations").mkdir(parents=True, exist_ok=True)
        actions = list(spec.actions)
        group = cfg.scenes_per_action
        scenes = scene_specs(cfg.seed, task_id, len(actions), group, cfg.palette)
        # one picture per scene, drawn once: every video of the scene looks through its own window into it
        textures = [scene_texture(sc, cfg.frame_size_px + 2 * cfg.jitter_px + 16) for sc in scenes]
        scene_names = [f"{spec.name}_g{k // group}s{k % group}_{sc.name}" for k, sc in enumerate(scenes)]
        rows = []
        for split, per_class in spec.splits.items():
            for a, label in enumerate(actions):
                for i in range(per_class):
                    rng = np.random.default_rng([cfg.seed, task_id, SPLIT_IDS[split], a, i])
                    home = split in spec.biased_splits and rng.random() < cfg.bias
                    scene_id = a * group + int(rng.integers(group)) if home else int(rng.integers(len(scenes)))
                    frames, masks = render_video(spec.actions[label], spec.style, textures[scene_id], cfg, rng)
                    video_id = f"{split}_{label}_{i:04d}"
                    write_mp4(task_dir / "videos" / f"{video_id}.mp4", frames, cfg.fps, cfg.crf)
                    np.savez_compressed(task_dir / "annotations" / f"{video_id}.npz",
                                        masks=np.packbits(masks, axis=-1), scene_id=scene_id,
                                        frame_size=np.array(masks.shape[1:]))
                    rows.append({"label": label, "youtube_id": video_id, "time_start": 0.0,
                                 "time_end": round(cfg.num_frames / cfg.fps, 3), "split": split})
                    done += 1
                    if progress:
                        progress(done, total)
        with open(task_dir / "manifest.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        (task_dir / "annotations" / "scenes.json").write_text(json.dumps(scene_names, indent=1))
        (task_dir / "annotations" / "scene_homes.json").write_text(
            json.dumps([actions[k // group] for k in range(len(scenes))], indent=1))
        (task_dir / "actions.json").write_text(json.dumps(actions, indent=1))
        counts[spec.name] = {split: len(actions) * n for split, n in spec.splits.items()}
    summary = {"config": to_dict(cfg), "videos": counts}
    (out / "benchmark.json").write_text(json.dumps(summary, indent=1))
    return summary


log = logging.getLogger(__name__)


def run_synth(cfg: SynthConfig) -> dict:
    """Render the benchmark into `cfg.out`; for a URI, into a local temporary folder that is then uploaded
    whole (the encoder writes local files)."""
    with tqdm(desc="synth videos", unit="video", disable=None) as bar, tempfile.TemporaryDirectory() as tmp:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
        target = storage.absolute(cfg.out)
        summary = generate(dataclasses.replace(cfg, out=tmp) if storage.is_uri(target) else cfg, progress)
        if storage.is_uri(target):
            storage.upload(tmp, target)
    log.info("synth: %s -> %s", json.dumps(summary["videos"]), target)
    return summary
