"""The scene adversary acts on the benchmark it is meant for: on a tiny draw of the synthetic benchmark
(real H.264 videos, decoded), a large scene weight leaves the adversary's own head unable to read the
`ood_test` scene that it reads well when its weight is 0 (the head then is a probe the backbone never
sees: it learns at weight 1 either way)."""

import csv
import json

import numpy as np
import pytest
import torch

from debias.training.models import SDN, ModelConfig
from debias.curation.sources import read_annotation
from debias.curation.synth import SynthConfig, generate
from debias.training.train import LossConfig, OptimConfig, evaluate, make_optimizer, train_one_epoch
from debias.curation.video import decode_window

SCENES_PER_ACTION = 2  # 6 actions: 12 scenes, chance 1/12


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, list[tuple[np.ndarray, int, int]]]:
    """split -> [(frames (T, H, W, 3) uint8, action id, scene id)], decoded from the written benchmark."""
    out = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(out=str(out), train_per_class=15, val_per_class=0, ood_val_per_class=0,
                         ood_test_per_class=10, target_train_per_class=0, target_test_per_class=0,
                         frame_size_px=32, num_frames=8, scenes_per_action=SCENES_PER_ACTION))
    task = out / "source"
    actions = json.loads((task / "actions.json").read_text())
    data: dict[str, list] = {}
    for row in csv.DictReader(open(task / "manifest.csv")):
        frames = np.stack(decode_window(task / "videos" / f"{row['youtube_id']}.mp4").frames)
        _, scene = read_annotation(str(task / "annotations"), row["youtube_id"])
        data.setdefault(row["split"], []).append((frames, actions.index(row["label"]), scene))
    return data


def _batches(items: list, size: int, rng: np.random.Generator | None = None) -> list[dict]:
    order = rng.permutation(len(items)) if rng is not None else np.arange(len(items))
    num_scenes = 6 * SCENES_PER_ACTION
    out = []
    for i in range(0, len(order), size):
        chosen = [items[j] for j in order[i:i + size]]
        out.append({"clips": torch.from_numpy(np.stack([c[0] for c in chosen])),
                    "label_id": torch.tensor([c[1] for c in chosen]), "scene_id": torch.tensor([c[2] for c in chosen]),
                    "scene_probs": torch.zeros(len(chosen), num_scenes)})
    return out


def _ood_scene_acc(videos: dict, lambda_scene: float, epochs: int = 10, seed: int = 1) -> float:
    torch.manual_seed(seed)
    model = SDN(ModelConfig(width=4, scene_layers=1, scene_hidden=32), num_actions=6,
                num_scenes=6 * SCENES_PER_ACTION, grl_alpha=1.0)
    optimizer = make_optimizer(model, OptimConfig(lr=0.05))
    rng = np.random.default_rng(seed)
    loss = LossConfig(lambda_scene=lambda_scene, lambda_mask=0.0, scene_target="hard")
    for _ in range(epochs):
        train_one_epoch(model, _batches(videos["train"], 16, rng), optimizer, loss, torch.device("cpu"))
    return evaluate(model, _batches(videos["ood_test"], 32), torch.device("cpu"))["scene_acc"]


@pytest.mark.slow
def test_a_large_scene_weight_hides_the_scene_from_its_own_adversary(videos):
    torch.set_num_threads(1)  # the machine is shared; the figures below do not depend on threads
    probe = _ood_scene_acc(videos, lambda_scene=0.0)
    adversary = _ood_scene_acc(videos, lambda_scene=2.0)
    chance = 1 / (6 * SCENES_PER_ACTION)
    # weight 0: the features carry the scene (the head reads it well above chance on shuffled scenes);
    # weight 2 (x grl_alpha 1): the backbone hides it, and the same head falls towards chance
    assert probe > 3 * chance, probe
    assert adversary < probe - 0.15 and adversary < 2.5 * chance, (probe, adversary)
