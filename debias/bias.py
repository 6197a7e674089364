"""Scene-bias measurements of a trained model, from the curated shards (no cluster needed).

Three numbers per model, each on held-out videos:

- **scene probe**: a linear classifier on the frozen backbone features predicting the pseudo scene
  label (`scene_id`), fitted on one half of `scene_split` and scored on the other. That split should
  draw scenes independently of actions (`ood` in the synthetic benchmark), so the probe cannot read the
  scene through the action. Lower = less scene information in the features.
- **representation bias** (Li & Vasconcelos, as in the SDN paper's introduction): a linear classifier on
  the features of *scene-only* clips (people removed over the whole clip, so no motion is left)
  predicting the action, fitted on `fit_split`, scored on `test_split`; bias = log(accuracy / chance).
  0 = the scene alone tells the model nothing about the action.
- **counterfactual**: each `test_split` clip's people pasted, frame by frame through their stored masks,
  onto the background of a clip of another action; the model's action accuracy on these composites
  against the clean clips (the drop), and how often it predicts the background clip's action instead.

A model here is anything with `features(clips_uint8) -> (B, D)` and `forward(clips_uint8) -> (action
logits, scene logits)`, as `debias.models.SDN`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import nn

from debias.clips import fill_people
from debias.config import check
from debias.curate import shard_files
from debias.video import decode_jpeg, unpack_mask


@dataclass
class BiasConfig:
    scene_split: str = "ood"  # scene probe: fitted and scored on the two halves of this split
    fit_split: str = "train"  # representation-bias probe: fitted here ...
    test_split: str = "val"  # ... and scored here; the counterfactual test runs here too
    max_videos: int = 2000  # per split (a seeded sample beyond that): the measurements run in memory
    clip_len: int = 16  # frames, centre window
    crop_px: int = 32  # centre crop
    background_fill: Literal["mean", "zero", "noise", "blur"] = "blur"  # fills the people out of a background
    probe_steps: int = 300  # full-batch Adam steps of the linear probes
    probe_lr: float = 0.05
    probe_weight_decay: float = 1e-3
    batch_size: int = 64  # clips per forward pass
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("max_videos", "clip_len", "probe_steps", "batch_size"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        check(self.crop_px >= 8, "crop_px", "must be >= 8")
        check(self.probe_lr > 0, "probe_lr", "must be > 0")


@dataclass
class Clips:
    """Centre clips of one split: frames (N, T, H, W, 3) uint8, masks (N, T, H, W) bool, label_id (N,),
    scene_id (N,)."""

    frames: np.ndarray
    masks: np.ndarray
    label_id: np.ndarray
    scene_id: np.ndarray


def load_clips(shards_dir: str | Path, split: str, cfg: BiasConfig) -> Clips:
    """The centre window and centre crop of up to `cfg.max_videos` videos of `split`, with their masks."""
    files = shard_files(Path(shards_dir) / "shards")
    if not files:
        raise FileNotFoundError(f"no shards in {Path(shards_dir) / 'shards'}")
    columns = ["split", "frames", "human_masks", "height", "width", "label_id", "scene_id"]
    tables = [pq.read_table(f, columns=columns) for f in files]
    rows = [t.filter(pc.equal(t["split"], split)) for t in tables]
    data = {c: [v for t in rows for v in t[c].to_pylist()] for c in columns[1:]}
    n = len(data["label_id"])
    if n == 0:
        raise ValueError(f"{shards_dir}: no videos in split '{split}' (bias measurement)")
    keep = np.sort(np.random.default_rng(cfg.seed).permutation(n)[:cfg.max_videos])
    frames, masks = [], []
    for i in keep:
        h, w, jpegs, packed = data["height"][i], data["width"][i], data["frames"][i], data["human_masks"][i]
        start = max(0, (len(jpegs) - cfg.clip_len) // 2)
        idx = np.minimum(np.arange(start, start + cfg.clip_len), len(jpegs) - 1)  # repeat the last frame when short
        top, left = max(0, (h - cfg.crop_px) // 2), max(0, (w - cfg.crop_px) // 2)
        window = (slice(None), slice(top, top + cfg.crop_px), slice(left, left + cfg.crop_px))
        frames.append(np.stack([decode_jpeg(jpegs[j]) for j in idx])[window])
        masks.append(np.stack([unpack_mask(packed[j], h, w) for j in idx])[window])
    return Clips(np.stack(frames), np.stack(masks), np.asarray(data["label_id"])[keep].astype(np.int64),
                 np.asarray(data["scene_id"])[keep].astype(np.int64))


def scene_only(clips: Clips, fill: str, seed: int = 0) -> np.ndarray:
    """The clips with the union of each clip's masks filled in every frame: background, no motion cue."""
    rng = np.random.default_rng(seed)
    tubes = np.broadcast_to(clips.masks.any(axis=1, keepdims=True), clips.masks.shape)
    return np.stack([fill_people(f, m, fill, rng) for f, m in zip(clips.frames, tubes)])


def counterfactual(clips: Clips, fill: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each clip's people on another clip's background (a clip of another action when there is one).

    Returns the composites (N, T, H, W, 3) uint8 and the index of each composite's background clip (N,).
    """
    rng = np.random.default_rng(seed)
    backgrounds = scene_only(clips, fill, seed)
    partner = np.empty(len(clips.label_id), np.int64)
    for i, label in enumerate(clips.label_id):
        others = np.flatnonzero(clips.label_id != label)
        partner[i] = rng.choice(others) if len(others) else (i + 1) % len(partner)
    composites = np.where(clips.masks[..., None], clips.frames, backgrounds[partner])
    return composites, partner


@torch.no_grad()
def _run(model: nn.Module, clips: np.ndarray, batch_size: int, what: Literal["features", "actions"]) -> torch.Tensor:
    model.eval()
    out = []
    for s in range(0, len(clips), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(clips[s:s + batch_size]))
        out.append(model.features(x) if what == "features" else model(x)[0])
    return torch.cat(out).float()


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: BiasConfig) -> nn.Module:
    """A multinomial logistic regression on standardised features (B, D) -> (B, num_classes) logits."""
    torch.manual_seed(cfg.seed)
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    linear = nn.Linear(features.shape[1], num_classes)
    optimizer = torch.optim.Adam(linear.parameters(), lr=cfg.probe_lr, weight_decay=cfg.probe_weight_decay)
    x = (features - mean) / std
    for _ in range(cfg.probe_steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(linear(x), labels).backward()
        optimizer.step()

    class Probe(nn.Module):
        def forward(self, f: torch.Tensor) -> torch.Tensor:
            return linear((f - mean) / std)

    return Probe().eval()


def probe_accuracy(fit_x: torch.Tensor, fit_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray,
                   cfg: BiasConfig) -> float:
    """Top-1 of a linear probe fitted on (fit_x, fit_y) and scored on (test_x, test_y)."""
    num_classes = int(max(fit_y.max(), test_y.max())) + 1
    probe = fit_linear_probe(fit_x, torch.from_numpy(fit_y), num_classes, cfg)
    with torch.no_grad():
        return float((probe(test_x).argmax(1).numpy() == test_y).mean())


def measure_bias(model: nn.Module, shards_dir: str | Path, num_actions: int, num_scenes: int, cfg: BiasConfig) -> dict:
    """All three measurements for one model; returns a flat dict of numbers (see the module docstring)."""
    scene = load_clips(shards_dir, cfg.scene_split, cfg)
    halves = np.arange(len(scene.label_id)) % 2 == 0
    f = _run(model, scene.frames, cfg.batch_size, "features")
    scene_acc = probe_accuracy(f[torch.from_numpy(halves)], scene.scene_id[halves],
                               f[torch.from_numpy(~halves)], scene.scene_id[~halves], cfg)

    fit, test = load_clips(shards_dir, cfg.fit_split, cfg), load_clips(shards_dir, cfg.test_split, cfg)
    only_acc = probe_accuracy(_run(model, scene_only(fit, cfg.background_fill, cfg.seed), cfg.batch_size, "features"),
                              fit.label_id,
                              _run(model, scene_only(test, cfg.background_fill, cfg.seed), cfg.batch_size, "features"),
                              test.label_id, cfg)
    chance = 1.0 / num_actions

    clean = _run(model, test.frames, cfg.batch_size, "actions").argmax(1).numpy()
    composites, partner = counterfactual(test, cfg.background_fill, cfg.seed)
    swapped = _run(model, composites, cfg.batch_size, "actions").argmax(1).numpy()
    clean_acc, swapped_acc = float((clean == test.label_id).mean()), float((swapped == test.label_id).mean())
    return {
        "scene_probe_acc": scene_acc, "scene_chance": 1.0 / num_scenes,
        "scene_only_probe_acc": only_acc, "action_chance": chance,
        # a probe at or below chance carries no scene-to-action information: clamp the log at 0
        "representation_bias": math.log(max(only_acc, chance) / chance),
        "counterfactual_clean_acc": clean_acc, "counterfactual_acc": swapped_acc,
        "counterfactual_drop": clean_acc - swapped_acc,
        "counterfactual_follows_background": float((swapped == test.label_id[partner]).mean()),
        "videos": {"scene_probe": len(scene.label_id), "fit": len(fit.label_id), "test": len(test.label_id)},
    }
