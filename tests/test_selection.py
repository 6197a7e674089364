"""Selection never reads the reporting split, and a sweep chooses on a metric that can reward debiasing."""

import pytest
import torch

from debias.config import ConfigError, load_config
from debias.training.selection import metric_split, scene_balanced_accuracy
from debias.experiments.sweep import SweepConfig, selection
from debias.training.train import PretrainConfig

SPLITS = ["val", "ood_val", "ood_test"]


def test_every_selection_path_refuses_a_reporting_split_metric_naming_its_key():
    with pytest.raises(ConfigError, match=r"metric: 'ood_test_acc' is read from 'ood_test', a reporting split"):
        load_config(SweepConfig, None, ["metric=ood_test_acc"])
    # the machinery's escape hatch still never reads the claims' split
    with pytest.raises(ConfigError, match=r"metric: 'ood_test_loss' is read from 'ood_test'"):
        load_config(SweepConfig, None, ["metric=ood_test_loss", "allow_in_distribution_metric=true"])
    with pytest.raises(ConfigError, match=r"best_metric: 'ood_test_video_acc' is read from 'ood_test'"):
        PretrainConfig(best_metric="ood_test_video_acc")
    # the checkpoint ranking's default (the first eval split's acc) is a choice too
    with pytest.raises(ConfigError, match=r"best_metric: 'ood_test_acc'"):
        PretrainConfig(eval_splits=["ood_test", "val"])
    with pytest.raises(ConfigError, match=r"optim\.plateau_metric: 'ood_test_loss'"):
        load_config(PretrainConfig, None, ["optim.schedule=plateau", "optim.plateau_metric=ood_test_loss"])
    with pytest.raises(ConfigError, match=r"selection_splits: must not share a split with report_splits"):
        PretrainConfig(selection_splits=["ood_val", "ood_test"])
    # another reporting split, declared by the config, is refused the same way
    with pytest.raises(ConfigError, match=r"metric: 'ood_val_acc' is read from 'ood_val', a reporting split"):
        load_config(SweepConfig, None, ["pretrain.report_splits=[ood_val]", "pretrain.selection_splits=[]"])


def test_the_sweep_refuses_the_pretraining_splits_own_accuracy_and_says_what_chose():
    with pytest.raises(ConfigError, match=r"metric: 'val_video_acc' is read from 'val', which is not a selection "
                                          r"split.*rewards the\s+scene shortcut.*val_scene_balanced_acc"):
        load_config(SweepConfig, None, ["metric=val_video_acc"])
    assert selection(SweepConfig()) == {"selected_by": "ood_val_acc", "selected_on": "ood_val",
                                        "reported_on": ["ood_test"]}
    # real data without an unbiased split: the scene-balanced accuracy of val
    real = load_config(SweepConfig, None, ["metric=val_scene_balanced_acc", "pretrain.eval_splits=[val]"])
    assert selection(real)["selected_on"] == "val"
    assert selection(load_config(SweepConfig, None, ["metric=train_loss",
                                                     "allow_in_distribution_metric=true"]))["selected_on"] == "train"


def test_metric_split_takes_the_longest_split_name():
    assert metric_split("ood_val_acc", SPLITS, "k") == "ood_val"
    assert metric_split("val_acc", SPLITS, "k") == "val"
    assert metric_split("ood_test_scene_balanced_acc", SPLITS, "k") == "ood_test"
    with pytest.raises(ConfigError, match=r"k: 'ood_acc' is not SPLIT_MEASURE"):
        metric_split("ood_acc", SPLITS, "k")


def test_scene_balanced_accuracy_by_hand():
    # action 0: 8 videos in its home scene 0 (all right) and 2 in scene 1 (both wrong): plain accuracy 0.8,
    # per cell 1.0 and 0.0; action 1: 2 videos in scene 1, one right: 0.5. Balanced: (1 + 0 + 0.5) / 3 = 0.5
    labels = torch.tensor([0] * 10 + [1] * 2)
    scenes = torch.tensor([0] * 8 + [1] * 2 + [1] * 2)
    predicted = torch.tensor([0] * 8 + [1] * 2 + [1, 0])
    assert (predicted == labels).double().mean().item() == pytest.approx(9 / 12)
    assert scene_balanced_accuracy(predicted, labels, scenes) == pytest.approx(0.5)
