"""Which way a per-epoch metric improves: the one rule that the learning-rate plateau schedule, checkpoint
ranking and sweeps all follow, so that none of them maximises what another minimises."""

from __future__ import annotations

from typing import Literal


def higher_is_better(metric: str) -> bool:
    """Accuracies and entropies (the mask loss maximises the masked-clip entropy) are maximised; losses,
    codelengths and everything else minimised."""
    return metric.endswith(("acc", "top5")) or "entropy" in metric


def mode(metric: str) -> Literal["max", "min"]:
    """The metric's direction as Ray Tune and Ray Train's CheckpointConfig spell it."""
    return "max" if higher_is_better(metric) else "min"
