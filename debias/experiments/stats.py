"""Statistics over seeds, in one place: the mean and spread of a figure (the sweep per weight pair, the
demo per variant), and paired comparisons: the per-seed difference of two variants and a 95 % interval
of its mean.

The variants of one seed share their initial weights, batch order and evaluation clips, so their
difference on that seed removes what the seed alone decides; the interval of the mean difference is the
claim (a gap "larger than the two stds" is not a test). Two intervals: the paired t interval (exact for
normal differences) and the percentile bootstrap (no normality, but too narrow for a handful of seeds).
No scipy: the t quantile is found from the density by bisection.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

import numpy as np


def paired_differences(a: Mapping[int, float], b: Mapping[int, float], what: str = "") -> dict[int, float]:
    """a[seed] - b[seed] for every seed; both must hold the same seeds (else ValueError naming them)."""
    if set(a) != set(b):
        raise ValueError(f"paired comparison{f' of {what}' if what else ''} needs the same seeds on both sides: "
                         f"only in the first {sorted(set(a) - set(b))}, only in the second {sorted(set(b) - set(a))}")
    return {seed: a[seed] - b[seed] for seed in sorted(a)}


def _t_density(x: float, dof: int) -> float:
    log_c = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    return math.exp(log_c - (dof + 1) / 2 * math.log1p(x * x / dof))


def _t_cdf_above_zero(x: float, dof: int, steps: int = 2000) -> float:
    """P(0 < T < x) for x >= 0: Simpson's rule on the density (smooth and bounded on [0, x])."""
    h = x / steps
    total = _t_density(0.0, dof) + _t_density(x, dof)
    total += sum((4 if k % 2 else 2) * _t_density(k * h, dof) for k in range(1, steps))
    return total * h / 3


def t_quantile(p: float, dof: int) -> float:
    """The p quantile (0.5 < p < 1) of Student's t with `dof` degrees of freedom."""
    if not (0.5 < p < 1.0) or dof < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and dof >= 1, got p={p}, dof={dof}")
    low, high = 0.0, 1.0
    while 0.5 + _t_cdf_above_zero(high, dof) < p:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if 0.5 + _t_cdf_above_zero(mid, dof) < p else (low, mid)
    return (low + high) / 2


def paired_t(diffs: list[float], level: float = 0.95) -> dict:
    """Mean of the paired differences and its t interval: mean -+ t_{(1+level)/2, n-1} * sd / sqrt(n).
    Needs n >= 2 (one seed has no spread)."""
    n = len(diffs)
    if n < 2:
        raise ValueError(f"a paired t interval needs at least 2 seeds, got {n}")
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return {"method": "paired_t", "level": level, "n": n, "mean": mean, "sd": sd, "low": mean - half,
            "high": mean + half}


def bootstrap(diffs: list[float], level: float = 0.95, resamples: int = 10000, seed: int = 0) -> dict:
    """Mean of the paired differences and its percentile bootstrap interval (seeds resampled with
    replacement, `resamples` times; reproducible through `seed`)."""
    n = len(diffs)
    if n < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 seeds, got {n}")
    values = np.asarray(diffs, dtype=np.float64)
    means = values[np.random.default_rng(seed).integers(0, n, size=(resamples, n))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {"method": "bootstrap", "level": level, "n": n, "mean": float(values.mean()), "resamples": resamples,
            "low": float(low), "high": float(high)}


def compare(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95, min_gain: float = 0.0,
            what: str = "") -> dict:
    """a vs b over their common seeds: the per-seed differences, both intervals, and the verdict on the
    paired t interval: `holds` when its lower end is above `min_gain` (a better by more than min_gain),
    `reversed` when its upper end is below -min_gain, else `undecided`."""
    diffs = paired_differences(a, b, what)
    t = paired_t(list(diffs.values()), level)
    verdict = "holds" if t["low"] > min_gain else "reversed" if t["high"] < -min_gain else "undecided"
    return {"differences": diffs, "paired_t": t, "bootstrap": bootstrap(list(diffs.values()), level),
            "min_gain": min_gain, "verdict": verdict}


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation (n - 1; 0 for one value) of `values`; (None, None)
    for none."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
