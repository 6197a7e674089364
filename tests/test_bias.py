"""Scene-bias measurements on real curated shards: a hand-built model that sees only the scene is
measured as biased; a model that sees nothing is not. The online code (MDL probe) on features that do and
do not hold the labels."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from debias.evaluation.bias import (MDL_PORTIONS, BiasConfig, block_ends, counterfactual, dataset_bias, fit_linear_probe,
                         load_bias_data, load_clips, measure_bias, online_codelength, scene_only)
from debias.config import ConfigError, load_config
from debias.curation.curate import PreprocessConfig
from debias.curation.synth import SynthConfig
from debias.curation.preprocess import run_preprocess
from debias.curation.synth import run_synth

CFG = BiasConfig(clip_len=8, crop_px=32, probe_steps=200)


class ColourLayout(nn.Module):
    """Prediction from the background only: features = the clip's mean colour on a 4 x 4 grid (the
    figure covers a few percent of the pixels); its action head is a linear probe fitted on these."""

    def __init__(self) -> None:
        super().__init__()
        self.head: nn.Module | None = None

    def features(self, clips_uint8: torch.Tensor) -> torch.Tensor:
        x = clips_uint8.float().mean(1).permute(0, 3, 1, 2) / 255.0  # (B, 3, H, W), averaged over time
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    def forward(self, clips_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.features(clips_uint8)), torch.zeros(len(clips_uint8), 1)


class Blind(nn.Module):
    """Sees nothing: constant features, always predicts action 0."""

    def features(self, clips_uint8: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(clips_uint8), 8)

    def forward(self, clips_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.zeros(len(clips_uint8), 6)
        logits[:, 0] = 1.0
        return logits, torch.zeros(len(clips_uint8), 1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("bench")
    # bias=1: every train/val video of an action is in the action's home scene (ood stays shuffled)
    run_synth(load_config(SynthConfig, None, [f"out={out / 'synth'}", "bias=1.0", "train_per_class=6",
                                              "val_per_class=4", "ood_val_per_class=2", "ood_test_per_class=6", "target_train_per_class=0",
                                              "scenes_per_action=1",
                                              "target_test_per_class=0", "frame_size_px=32", "num_frames=8"]))
    pre = load_config(PreprocessConfig, None, [
        f"out={out / 'data'}", f"input.manifest={out / 'synth/source/manifest.csv'}", "decode.num_frames=8",
        "labels.mask_provider=annotations", "labels.scene_provider=annotations"])
    run_preprocess(pre)
    return pre.out


def test_scene_only_and_counterfactual_clips_move_the_people_not_the_scene(shards):
    clips = load_clips(shards, "val", CFG)
    assert clips.frames.shape == (24, 8, 32, 32, 3) and clips.masks.shape == (24, 8, 32, 32)
    assert clips.masks.any(axis=(1, 2, 3)).all()  # every clip has a person
    background = scene_only(clips, "blur")
    tube = clips.masks.any(axis=1, keepdims=True)
    # outside the union of the masks the scene is untouched; inside, the person is gone
    assert np.array_equal(np.where(tube[..., None], 0, background), np.where(tube[..., None], 0, clips.frames))
    assert not np.array_equal(background, clips.frames)
    composites, partner = counterfactual(clips, "blur")
    assert (clips.label_id[partner] != clips.label_id).all()
    m = clips.masks[..., None]
    assert np.array_equal(np.where(m, composites, 0), np.where(m, clips.frames, 0))  # the people are kept
    assert np.array_equal(np.where(m, 0, composites), np.where(m, 0, background[partner]))  # on another scene


def test_a_scene_only_model_is_measured_as_biased_and_a_blind_one_is_not(shards):
    model = ColourLayout()
    train = load_clips(shards, "train", CFG)
    features = model.features(torch.from_numpy(train.frames))
    model.head = fit_linear_probe(features, torch.from_numpy(train.label_id), 6, CFG)

    data = load_bias_data(shards, CFG)  # shared by both models, as the demo measures many on one dataset
    biased = measure_bias(model, shards, num_actions=6, num_scenes=6, cfg=CFG, data=data)
    assert biased["videos"] == {"scene_probe": 36, "fit": 36, "test": 24}
    assert biased["scene_probe_acc"] >= 0.6  # chance 1/6: the features hold the scene
    assert biased["representation_bias"] >= math.log(3)  # the scene alone gives the action away
    assert biased["masked_action_acc"] >= 0.8  # people removed, it still names the action: from the scene
    assert biased["masked_action_prob"] > 0.5
    assert biased["counterfactual_clean_acc"] >= 0.8
    assert biased["counterfactual_drop"] >= 0.5  # moved onto another scene, the people are misread ...
    assert biased["counterfactual_follows_background"] >= 0.5  # ... as the action of that scene

    blind = measure_bias(Blind(), shards, num_actions=6, num_scenes=6, cfg=CFG, data=data)
    assert blind["representation_bias"] <= 0.1 < biased["representation_bias"]
    assert blind["scene_probe_acc"] < biased["scene_probe_acc"]
    # constant features: every block is coded with the label frequencies seen so far, never below ~uniform.
    # (On 36 videos the online code of the colour features is dominated by its first, overfitted probes;
    # test_online_code_blocks_and_codelength checks that informative features compress.)
    assert blind["scene_mdl_bits"] > 0.9 * blind["scene_mdl_uniform_bits"] == 0.9 * 36 * math.log2(6)
    assert biased["scene_mdl_bits"] > 0
    assert blind["masked_action_acc"] == float((data.test.label_id == 0).mean())  # it always says action 0
    # ... with logits (1, 0, 0, 0, 0, 0): p(action 0) = e / (e + 5), the others 1 / (e + 5)
    e = math.e
    expected = float(np.where(data.test.label_id == 0, e / (e + 5), 1 / (e + 5)).mean())
    assert blind["masked_action_prob"] == pytest.approx(expected, rel=1e-5)
    assert blind["counterfactual_drop"] == 0.0  # its prediction does not depend on the clip

    # bias=1.0: in train and val every action is in its home scene, so the scene label alone names it
    assert dataset_bias(data, 6) == {"scene_label_action_acc": 1.0, "action_chance": 1 / 6,
                                     "scene_label_bias": math.log(6)}


def test_online_code_blocks_and_codelength():
    # the paper's portions on the demo's 150 ood videos: shares that round to the same count merge
    assert block_ends(150, MDL_PORTIONS) == [1, 2, 5, 9, 19, 38, 75, 150]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=300)
    informative = torch.from_numpy(np.eye(6)[labels] + 0.1 * rng.standard_normal((300, 6))).float()
    noise = torch.from_numpy(rng.standard_normal((300, 6))).float()
    cfg = BiasConfig(probe_steps=100)
    clear, blind = online_codelength(informative, labels, 6, cfg), online_codelength(noise, labels, 6, cfg)
    assert clear["uniform_bits"] == blind["uniform_bits"] == pytest.approx(300 * math.log2(6))
    assert clear["blocks"] == block_ends(300, MDL_PORTIONS)
    # the first block costs log2 6 a label; after it a probe on one-hot features codes labels nearly free
    assert clear["bits"] < 0.2 * clear["uniform_bits"] and clear["compression"] > 5
    assert blind["bits"] > 0.9 * blind["uniform_bits"]  # noise: nothing to learn, no compression
    assert online_codelength(informative, labels, 6, cfg) == clear  # seeded: the same order and probes


@pytest.mark.parametrize("portions", [[0.5], [0.5, 0.25, 1.0], [0.1, 0.5], [0.0, 1.0]])
def test_bad_online_code_portions_fail_naming_the_key(portions):
    with pytest.raises(ConfigError, match="mdl_portions"):
        BiasConfig(mdl_portions=portions)
