"""Which split may choose what: selection never reads the split a claim is reported on.

Every choice made from data (a sweep's best weights, ASHA's pruning, the plateau schedule, the checkpoint
ranked best, a default taken from a recorded sweep) reads a per-epoch metric `SPLIT_MEASURE`. Two sets
of splits govern them:

- `report_splits` (the benchmark's `ood_test`): claims are read there, so no choice may read them;
- `selection_splits` (the benchmark's `ood_val`): scenes drawn independently of the action and no claim
  read from them, so a metric there can reward debiasing. A debiasing choice (the sweep, ASHA) must read
  one of them, or the scene-balanced accuracy of any other non-reporting split: the pretraining split's
  own accuracy (`val_acc` on data biased like the training set) rewards the scene shortcut.

`SPLIT_scene_balanced_acc` is the accuracy averaged over the (action, scene) cells present in the split,
each cell counting once ("unbiased accuracy", Bahng et al., ICML 2020): on a biased split the frequent
home-scene cells weigh no more than the rare out-of-context ones. On real data the scene is a pseudo
label (Places365, or the weight-free clusters), so it is a noisy stand-in for an unbiased split
(docs/training.md, "Choosing on data the claim is not read from").
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from debias.config import ConfigError

SCENE_BALANCED = "scene_balanced_acc"  # the measure a debiasing choice may read on a biased split


def metric_split(metric: str, splits: Iterable[str], key: str) -> str:
    """The split a per-epoch metric is read from: the longest of `splits` (plus `train`) that `metric`
    starts with followed by `_` (split names hold underscores: ood_val_acc is ood_val's acc)."""
    known = sorted({*splits, "train"}, key=len, reverse=True)
    for split in known:
        if metric.startswith(f"{split}_") and len(metric) > len(split) + 1:
            return split
    raise ConfigError(f"{key}: {metric!r} is not SPLIT_MEASURE with SPLIT one of {sorted(known)}")


def check_not_reporting(metric: str, report_splits: Iterable[str], key: str) -> None:
    """Refuse a metric read from a reporting split (ConfigError naming `key`)."""
    for split in report_splits:
        if metric.startswith(f"{split}_"):
            raise ConfigError(f"{key}: {metric!r} is read from {split!r}, a reporting split (report_splits "
                              f"{sorted(report_splits)}): a choice made on the split a claim is read from biases "
                              f"the claim. Choose on a selection split (e.g. ood_val) instead")


def check_debiasing_selection(metric: str, splits: Iterable[str], report_splits: Iterable[str],
                              selection_splits: Iterable[str], key: str) -> str:
    """A metric that may choose loss weights: not from a reporting split, and from a selection split or a
    scene-balanced accuracy (ConfigError naming `key` otherwise); returns its split."""
    check_not_reporting(metric, report_splits, key)
    split = metric_split(metric, splits, key)
    if split not in set(selection_splits) and metric != f"{split}_{SCENE_BALANCED}":
        raise ConfigError(
            f"{key}: {metric!r} is read from {split!r}, which is not a selection split (selection_splits "
            f"{sorted(selection_splits)}): on a split biased like the training data the accuracy rewards the "
            f"scene shortcut, not debiasing. Use a selection split's metric (e.g. ood_val_acc) or "
            f"{split}_{SCENE_BALANCED} (each action-scene pair weighs the same; docs/training.md)")
    return split


def selection_record(metric: str, split: str, report_splits: Iterable[str]) -> dict:
    """What every summary states about its choice: the metric and split that chose, and the splits the
    claims are read from."""
    return {"selected_by": metric, "selected_on": split, "reported_on": sorted(report_splits)}


def scene_balanced_accuracy(predicted: torch.Tensor, labels: torch.Tensor, scenes: torch.Tensor) -> float:
    """Accuracy per (action, scene) cell present, averaged over the cells. All (N,) int tensors."""
    cells = labels.long() * (int(scenes.max()) + 1) + scenes.long()
    _, cell_index = torch.unique(cells, return_inverse=True)
    hits = torch.zeros(int(cell_index.max()) + 1, dtype=torch.float64).index_add_(
        0, cell_index, (predicted == labels).double())
    sizes = torch.bincount(cell_index).double()
    return (hits / sizes).mean().item()
