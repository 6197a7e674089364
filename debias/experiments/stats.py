"""Statistics over seeds, in one place: the mean and spread of a figure, used by the sweep (per weight
pair) and the demo's ablation (per variant)."""

from __future__ import annotations

import statistics


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation (n - 1; 0 for one value) of `values`; (None, None)
    for none."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
