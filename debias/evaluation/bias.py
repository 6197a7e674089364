"""Scene-bias measurements of a trained model, from the curated shards (no cluster needed).

Per model, each on held-out videos (`measure_bias`, one flat dict):

- **scene probe** on `scene_split`, whose scenes are drawn independently of the actions (`ood_test` in the
  synthetic benchmark), so a probe cannot read the scene through the action:
  - `scene_probe_acc`: a linear classifier on the frozen backbone features predicting the scene label
    (`scene_id`), fitted on one half and scored on the other. It saturates (1.0) as soon as the scene
    is linearly readable at all, however hard that is;
  - `scene_mdl_*`: the online (prequential) codelength of the scene labels given the features, in bits
    (Voita & Titov, 2020): the labels are sent block by block, the first block with the uniform code,
    every next one with a probe fitted on all the blocks before it. Fewer bits = the scene is read off
    the features from fewer examples; compression = uniform bits / codelength (1 = nothing learnt).
- **the model's own reliance on the scene**, on `test_split`:
  - `masked_action_acc`: the model's action accuracy on its clips with the people removed over the
    whole clip (no motion left), against `action_chance`; a model that reads the action from the
    scene keeps the split's scene-action correlation here. `masked_action_prob`: the mean probability
    it gives the true action there (chance: 1 / actions). The mask loss makes a model unsure without
    people, but its argmax may still lean to the scene's action: the accuracy counts that lean as a
    hit however small, the probability weighs it;
  - `counterfactual_*`: each clip's people pasted, frame by frame through their stored masks, onto the
    background of a clip of another action; the action accuracy on these composites against the clean
    clips (the drop), and how often the model predicts the background clip's action instead.
- **representation bias** (Li & Vasconcelos, 2019, as in the SDN paper's introduction) of the data
  with respect to the model's features: a linear classifier on the features of the *scene-only* clips
  predicting the action, fitted on `fit_split`, scored on `test_split`; bias = log(accuracy / chance).
  Its ceiling is a property of the data, not of the model (`dataset_bias`, reported once per dataset):
  the accuracy of the best guess of the action from the true scene label alone. Features from which
  the scene is linearly readable reach that ceiling, whatever the model does with them.

A model here is anything with `features(clips_uint8) -> (B, D)` and `forward(clips_uint8) -> (action
logits, ...)`, as `debias.training.models.SDN`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from debias.config import check
from debias.curation.shards import read_parquet, shard_files
from debias.evaluation.counterfactual import background_only, centre_clip

# The online code's block ends as shares of the data (Voita & Titov, 2020, section 3.2).
MDL_PORTIONS = [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0]



# Every scene-bias measure `measure_bias` returns, with the direction in which a model relies more on the
# scene (+1: a higher value means more scene-reliant): the reports' columns and the demo's separation table.
MEASURES = {"scene_probe_acc": +1, "scene_mdl_bits": -1, "scene_mdl_compression": +1, "masked_action_acc": +1,
            "masked_action_prob": +1, "representation_bias": +1, "counterfactual_drop": +1,
            "counterfactual_follows_background": +1}

@dataclass
class BiasConfig:
    scene_split: str = "ood_test"  # scene probe and online code: on this split (scene independent of action)
    fit_split: str = "train"  # representation-bias probe: fitted here ...
    test_split: str = "val"  # ... and scored here; the masked-clip and counterfactual tests run here too
    max_videos: int = 2000  # per split (a seeded sample beyond that): the measurements run in memory
    clip_len: int = 16  # frames, centre window
    crop_px: int = 32  # centre crop
    background_fill: Literal["mean", "zero", "noise", "blur"] = "blur"  # fills the people out of a background
    probe_steps: int = 300  # full-batch Adam steps of the linear probes
    probe_lr: float = 0.05
    probe_weight_decay: float = 1e-3
    # The online code's block ends, shares of scene_split in (0, 1], increasing, the last 1. Ends that
    # round to the same number of videos on a small split merge into one block.
    mdl_portions: list[float] = field(default_factory=lambda: list(MDL_PORTIONS))
    batch_size: int = 64  # clips per forward pass
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("max_videos", "clip_len", "probe_steps", "batch_size"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        check(self.crop_px >= 8, "crop_px", "must be >= 8")
        check(self.probe_lr > 0, "probe_lr", "must be > 0")
        p = self.mdl_portions
        check(len(p) >= 2 and all(0 < a < b for a, b in zip(p, p[1:])) and p[-1] == 1.0, "mdl_portions",
              f"must be at least two increasing shares in (0, 1] ending with 1.0, got {p}")


@dataclass
class Clips:
    """Centre clips of one split: frames (N, T, H, W, 3) uint8, masks (N, T, H, W) bool, label_id (N,),
    scene_id (N,)."""

    frames: np.ndarray
    masks: np.ndarray
    label_id: np.ndarray
    scene_id: np.ndarray


@dataclass
class BiasData:
    """Everything the measurements feed the models, built once per dataset (`load_bias_data`) and
    shared by every model measured on it: the three splits' clips, the scene-only clips of fit and
    test, and the counterfactual composites of test with each one's background clip (partner, (N,))."""

    scene: Clips
    fit: Clips
    test: Clips
    fit_scene_only: np.ndarray
    test_scene_only: np.ndarray
    composites: np.ndarray
    partner: np.ndarray


def load_clips(shards_dir: str, split: str, cfg: BiasConfig) -> Clips:
    """The centre window and centre crop of up to `cfg.max_videos` videos of `split`, with their masks,
    in the order of (video_id, clip_index): the curated row order varies from one preprocess run to the
    next (its decoders finish in any order), the measurements do not. Reads the shard columns video_id,
    clip_index, split, frames, human_masks, height, width, label_id, scene_id."""
    columns = ["video_id", "clip_index", "split", "frames", "human_masks", "height", "width", "label_id", "scene_id"]
    tables = [read_parquet(f, columns=columns) for f in shard_files(str(shards_dir))]
    rows = pa.concat_tables([t.filter(pc.equal(t["split"], split)) for t in tables])
    rows = rows.sort_by([("video_id", "ascending"), ("clip_index", "ascending")])
    data = {c: rows[c].to_pylist() for c in columns[3:]}
    n = len(data["label_id"])
    if n == 0:
        raise ValueError(f"{shards_dir}: no videos in split '{split}' (bias measurement)")
    keep = np.sort(np.random.default_rng(cfg.seed).permutation(n)[:cfg.max_videos])
    frames, masks = [], []
    for i in keep:
        f, m = centre_clip(data["frames"][i], data["human_masks"][i], data["height"][i], data["width"][i],
                           cfg.clip_len, cfg.crop_px)
        frames.append(f)
        masks.append(m)
    return Clips(np.stack(frames), np.stack(masks), np.asarray(data["label_id"])[keep].astype(np.int64),
                 np.asarray(data["scene_id"])[keep].astype(np.int64))


def scene_only(clips: Clips, fill: str, seed: int = 0) -> np.ndarray:
    """The clips with the union of each clip's masks filled in every frame: background, no motion cue."""
    rng = np.random.default_rng(seed)
    return np.stack([background_only(f, m, fill, rng) for f, m in zip(clips.frames, clips.masks)])


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


def load_bias_data(shards_dir: str, cfg: BiasConfig) -> BiasData:
    """The clips of `cfg`'s three splits and what is built from them (see `BiasData`)."""
    scene, fit, test = (load_clips(shards_dir, s, cfg) for s in (cfg.scene_split, cfg.fit_split, cfg.test_split))
    composites, partner = counterfactual(test, cfg.background_fill, cfg.seed)
    return BiasData(scene, fit, test, scene_only(fit, cfg.background_fill, cfg.seed),
                    scene_only(test, cfg.background_fill, cfg.seed), composites, partner)


@torch.no_grad()
def _run(model: nn.Module, clips: np.ndarray, batch_size: int, what: Literal["features", "actions"]) -> torch.Tensor:
    model.eval()
    out = []
    for s in range(0, len(clips), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(clips[s:s + batch_size]))
        out.append(model.features(x) if what == "features" else model(x)[0])
    return torch.cat(out).float()


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: BiasConfig,
                     scale: tuple[torch.Tensor, torch.Tensor] | None = None) -> nn.Module:
    """A multinomial logistic regression on standardised features (B, D) -> (B, num_classes) logits.

    `scale`: the (mean (D,), std (D,)) to standardise with; default: those of `features` (a probe
    fitted on a handful of examples needs them from more: their own std is ~0)."""
    torch.manual_seed(cfg.seed)
    mean, std = scale if scale is not None else (features.mean(0), features.std(0))
    std = std.clamp_min(1e-6)
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


def block_ends(n: int, portions: list[float]) -> list[int]:
    """The online code's block ends for n examples: round(share x n), at least 1, repeats merged."""
    return sorted({max(1, round(p * n)) for p in portions})


def online_codelength(features: torch.Tensor, labels: np.ndarray, num_classes: int, cfg: BiasConfig) -> dict:
    """The online code of `labels` (N,) given `features` (N, D) (Voita & Titov, 2020), in bits.

    In a seeded random order, the first block is sent with the uniform code (log2 num_classes bits a
    label); block k+1 with the probabilities of a linear probe fitted on blocks 1..k. Both sides know
    all the features, so every probe standardises with the statistics of all N.
    Returns {"bits", "uniform_bits", "compression" (uniform / bits), "blocks" (the block ends)}.
    """
    n = len(labels)
    order = torch.from_numpy(np.random.default_rng(cfg.seed).permutation(n))
    x, y = features[order], torch.from_numpy(labels)[order]
    scale = (features.mean(0), features.std(0))
    ends = block_ends(n, cfg.mdl_portions)
    bits = ends[0] * math.log2(num_classes)
    for start, end in zip(ends, ends[1:]):
        probe = fit_linear_probe(x[:start], y[:start], num_classes, cfg, scale)
        with torch.no_grad():
            log_p = torch.log_softmax(probe(x[start:end]), dim=1).gather(1, y[start:end, None])
        bits -= float(log_p.sum()) / math.log(2)
    uniform = n * math.log2(num_classes)
    return {"bits": bits, "uniform_bits": uniform, "compression": uniform / bits, "blocks": ends}


def dataset_bias(data: BiasData, num_actions: int) -> dict:
    """The data's own scene bias, the same for every model: the action guessed from the true scene label
    alone (each scene's most frequent action in fit, scored on test), its accuracy and
    log(accuracy / chance). A model's `representation_bias` cannot exceed this by reading the scene."""
    guess = np.zeros(int(max(data.fit.scene_id.max(), data.test.scene_id.max())) + 1, np.int64)
    for scene in np.unique(data.fit.scene_id):
        guess[scene] = np.bincount(data.fit.label_id[data.fit.scene_id == scene]).argmax()
    acc = float((guess[data.test.scene_id] == data.test.label_id).mean())
    chance = 1.0 / num_actions
    return {"scene_label_action_acc": acc, "action_chance": chance,
            "scene_label_bias": math.log(max(acc, chance) / chance)}


def measure_bias(model: nn.Module, shards_dir: str, num_actions: int, num_scenes: int, cfg: BiasConfig,
                 data: BiasData | None = None) -> dict:
    """Every measurement for one model; returns a flat dict of numbers (see the module docstring).

    `data`: `load_bias_data(shards_dir, cfg)`, when several models are measured on the same data."""
    data = data or load_bias_data(shards_dir, cfg)
    scene = data.scene
    f = _run(model, scene.frames, cfg.batch_size, "features")
    halves = torch.from_numpy(np.arange(len(scene.label_id)) % 2 == 0)
    scene_acc = probe_accuracy(f[halves], scene.scene_id[halves.numpy()], f[~halves], scene.scene_id[~halves.numpy()],
                               cfg)
    mdl = online_codelength(f, scene.scene_id, num_scenes, cfg)

    only_acc = probe_accuracy(_run(model, data.fit_scene_only, cfg.batch_size, "features"), data.fit.label_id,
                              _run(model, data.test_scene_only, cfg.batch_size, "features"), data.test.label_id, cfg)
    chance = 1.0 / num_actions
    test = data.test
    masked_probs = _run(model, data.test_scene_only, cfg.batch_size, "actions").softmax(1)
    masked = masked_probs.argmax(1).numpy()
    clean = _run(model, test.frames, cfg.batch_size, "actions").argmax(1).numpy()
    swapped = _run(model, data.composites, cfg.batch_size, "actions").argmax(1).numpy()
    clean_acc, swapped_acc = float((clean == test.label_id).mean()), float((swapped == test.label_id).mean())
    return {
        "scene_probe_acc": scene_acc, "scene_chance": 1.0 / num_scenes,
        "scene_mdl_bits": mdl["bits"], "scene_mdl_uniform_bits": mdl["uniform_bits"],
        "scene_mdl_compression": mdl["compression"],
        "masked_action_acc": float((masked == test.label_id).mean()),
        "masked_action_prob": float(masked_probs.gather(1, torch.from_numpy(test.label_id)[:, None]).mean()),
        "action_chance": chance,
        "scene_only_probe_acc": only_acc,
        # a probe at or below chance carries no scene-to-action information: clamp the log at 0
        "representation_bias": math.log(max(only_acc, chance) / chance),
        "counterfactual_clean_acc": clean_acc, "counterfactual_acc": swapped_acc,
        "counterfactual_drop": clean_acc - swapped_acc,
        "counterfactual_follows_background": float((swapped == test.label_id[data.partner]).mean()),
        "videos": {"scene_probe": len(scene.label_id), "fit": len(data.fit.label_id), "test": len(test.label_id)},
    }
