"""The ablation's claims on paired intervals: each variant against the baseline, and SDN against each
single loss, per seed on the reporting split, with a 95 % interval of the mean difference (debias/stats.py).

A claim "A beats B by more than g" holds when the interval's lower end is above g, is reversed when its
upper end is below -g, and is undecided otherwise; with one seed there is no interval and no claim.
"""

from __future__ import annotations

from debias.report import table
from debias.stats import compare

# (better, worse) pairs the ablation compares: every loss against none, and both against each alone
PAIRS = (("scene_only", "baseline"), ("mask_only", "baseline"), ("sdn", "baseline"), ("sdn", "scene_only"),
         ("sdn", "mask_only"))
COLUMNS = ["comparison", "metric", "seeds", "mean", "t_low", "t_high", "boot_low", "boot_high", "verdict"]


def per_seed(rows: dict[str, dict], variant: str, metric: str) -> dict[int, float]:
    """{seed: metric} of one variant's runs (rows as the demo's `per_model`: variant, seed, metrics)."""
    return {r["seed"]: r[metric] for r in rows.values() if r["variant"] == variant and r.get(metric) is not None}


def ablation(rows: dict[str, dict], metric: str, min_gain: float = 0.0, level: float = 0.95,
             pairs: tuple[tuple[str, str], ...] = PAIRS) -> list[dict]:
    """One entry per pair: the per-seed differences of `metric` (first minus second), their mean, the
    paired t and percentile bootstrap intervals, and the verdict on the t interval against `min_gain`."""
    out = []
    for a, b in pairs:
        entry = {"comparison": f"{a} - {b}", "metric": metric, "min_gain": min_gain, "level": level}
        mine, theirs = per_seed(rows, a, metric), per_seed(rows, b, metric)
        if len(mine) < 2:
            diffs = {s: mine[s] - theirs[s] for s in mine if s in theirs}
            out.append({**entry, "seeds": len(diffs), "differences": diffs, "verdict": "no interval (one seed)"})
            continue
        result = compare(mine, theirs, level, min_gain, what=entry["comparison"])
        t, boot = result["paired_t"], result["bootstrap"]
        out.append({**entry, "seeds": t["n"], "differences": result["differences"], "mean": t["mean"],
                    "t_low": t["low"], "t_high": t["high"], "boot_low": boot["low"], "boot_high": boot["high"],
                    "verdict": result["verdict"]})
    return out


def claim(rows: dict[str, dict], reported: str, in_distribution: str, min_gain: float, max_drop: float,
          level: float = 0.95) -> dict:
    """The demo's claim on intervals: SDN beats the baseline on `reported` by more than `min_gain` (lower
    end of the paired interval above it) while its `in_distribution` accuracy drops by less than
    `max_drop` (upper end of the interval of baseline - SDN below it)."""
    gain = ablation(rows, reported, min_gain, level, (("sdn", "baseline"),))[0]
    drop = ablation(rows, in_distribution, 0.0, level, (("baseline", "sdn"),))[0]
    holds = "t_low" in gain and "t_high" in drop and gain["t_low"] > min_gain and drop["t_high"] < max_drop
    return {"gain": gain, "drop": drop, "min_gain": min_gain, "max_drop": max_drop, "holds": holds}


def ablation_table(entries: list[dict]) -> str:
    """The ablation entries as a markdown table."""
    return table(entries, COLUMNS)
