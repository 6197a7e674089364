"""The demo's ablation as plain functions over finished runs: the variants, per-run rows, statistics over
seeds, which measures separate the variants, the per-class drops, and the claims on paired intervals:
each variant against the baseline and SDN against each single loss, per seed on the reporting split,
with a 95 % interval of the mean difference (debias/experiments/stats.py). A claim "A beats B by more
than g" holds when the interval's lower end is above g, is reversed when its upper end is below -g, and
is undecided otherwise; with one seed there is no interval and no claim. No Ray, no files: the demo
(debias/experiments/demo.py) feeds these its runs' results, the tests fabricated ones."""

from __future__ import annotations

import statistics

from debias.experiments.stats import compare, mean_std
from debias.report import table

VARIANTS = ("baseline", "scene_only", "mask_only", "sdn")
# Per model: the trainer's figures the report aggregates over seeds (the bias measures:
# debias.evaluation.bias.MEASURES).
TRAINER_FIGURES = ("val_acc", "ood_acc", "ood_scene_head_acc", "val_masked_entropy")


def variants(lambda_scene: float, lambda_mask: float) -> dict[str, tuple[float, float]]:
    """The ablation: (lambda_scene, lambda_mask) per variant, from SDN's two weights."""
    return {"baseline": (0.0, 0.0), "scene_only": (lambda_scene, 0.0), "mask_only": (0.0, lambda_mask),
            "sdn": (lambda_scene, lambda_mask)}


def per_model(results: dict, weights: dict[str, tuple[float, float]]) -> dict[str, dict]:
    """One entry per run: its variant, seed, loss weights, final trainer figures and bias measures.
    `results`: (variant, seed) -> {"final": the run's last metrics, "bias": its measures}; `ood_acc` is
    the reporting split's (ood_test) accuracy.
    `weights`: variant -> (lambda_scene, lambda_mask)."""
    rows = {}
    for (name, seed), r in results.items():
        ls, lm = weights[name]
        final = r["final"]
        rows[f"{name}_seed{seed}"] = {
            "variant": name, "seed": seed, "lambda_scene": ls, "lambda_mask": lm,
            # the claims' split: ood_test (debias/training/selection.py); ood_val chose the weights
            "val_acc": final["val_acc"], "ood_acc": final["ood_test_acc"],
            # On `ood_test` the scene is independent of the action, so the scene head's accuracy there is the
            # scene information its adversary still finds. Without the scene loss nothing hides it: n/a.
            "ood_scene_head_acc": final["ood_test_scene_acc"] if ls > 0 else None,
            "val_masked_entropy": final["val_masked_entropy"],
            **{k: v for k, v in r["bias"].items() if k != "videos"}}
    return rows


def aggregate(rows: dict[str, dict], keys: list[str]) -> dict[str, dict]:
    """Per variant: mean, standard deviation (sample, n - 1; 0 for one seed) and the values over seeds."""
    out = {}
    for name in VARIANTS:
        mine = [r for r in rows.values() if r["variant"] == name]
        entry: dict = {"lambda_scene": mine[0]["lambda_scene"], "lambda_mask": mine[0]["lambda_mask"],
                       "seeds": [r["seed"] for r in mine]}
        for k in keys:
            values = [r[k] for r in mine if r.get(k) is not None]
            entry[k], entry[f"{k}_std"] = mean_std(values)
            entry[f"{k}_values"] = values
        out[name] = entry
    return out


def separation(means: dict[str, dict], measures: dict[str, int]) -> dict[str, dict]:
    """Per measure: the variants ordered from most to least scene-reliant by their means, and for each
    pair of neighbours in that order and for baseline vs SDN whether the gap between the means exceeds
    the sum of their standard deviations over seeds (mean +- std intervals apart)."""
    out = {}
    for k, sign in measures.items():
        order = sorted(VARIANTS, key=lambda v: -sign * means[v][k])

        def apart(a: str, b: str) -> dict:
            gap = abs(means[a][k] - means[b][k])
            spread = means[a][f"{k}_std"] + means[b][f"{k}_std"]
            return {"pair": f"{a} > {b}", "gap": gap, "spread": spread, "separated": gap > spread}

        base_sdn = apart("baseline", "sdn")
        out[k] = {"order": order, "neighbours": [apart(a, b) for a, b in zip(order, order[1:])],
                  "baseline_vs_sdn": {**base_sdn,
                                      "baseline_more_reliant": sign * (means["baseline"][k] - means["sdn"][k]) > 0}}
    return out


def mean_histories(results: dict) -> dict[str, list[dict]]:
    """Per variant, the per-epoch metrics averaged over its seeds (the numeric ones every seed has)."""
    out = {}
    for name in VARIANTS:
        histories = [r["history"] for (v, _), r in results.items() if v == name]
        epochs = min(len(h) for h in histories)
        out[name] = [{k: statistics.fmean(h[e][k] for h in histories) for k, v in histories[0][e].items()
                      if isinstance(v, (int, float)) and all(k in h[e] for h in histories)} for e in range(epochs)]
    return out


def class_drops_over_seeds(results: dict, variants: tuple[str, ...]) -> list[dict]:
    """Per action class, each variant's accuracy drop from in-distribution to out-of-context (the runs'
    per_class.json: `drop_SPLIT` for each eval split after the first), mean over seeds; sorted by the
    first variant's drop, largest first (the actions that lean on their scene most)."""
    drops: dict[tuple[str, str], list[float]] = {}
    for (variant, _seed), r in results.items():
        for row in r["per_class"] if variant in variants else []:
            for key, v in row.items():
                if key.startswith("drop_") and v is not None:
                    drops.setdefault((row["class"], f"{variant}_{key}"), []).append(v)
    classes = list(dict.fromkeys(c for c, _ in drops))
    # columns in the order of `variants` (the runs finish in any order)
    keys = [k for v in variants for k in sorted({k for _, k in drops if k.startswith(f"{v}_")})]
    rows = [{"class": c, **{k: statistics.fmean(drops[c, k]) for k in keys if (c, k) in drops}} for c in classes]
    return sorted(rows, key=lambda r: -r.get(keys[0], 0.0)) if keys else rows


def fmt(entry: dict, key: str) -> str:
    """mean +- std over seeds, or n/a."""
    return "n/a" if entry[key] is None else f"{entry[key]:.3f} ± {entry[f'{key}_std']:.3f}"


# (better, worse) pairs the ablation compares: every loss against none, and both against each alone
PAIRS = (("scene_only", "baseline"), ("mask_only", "baseline"), ("sdn", "baseline"), ("sdn", "scene_only"),
         ("sdn", "mask_only"))
COLUMNS = ["comparison", "metric", "seeds", "mean", "t_low", "t_high", "boot_low", "boot_high", "verdict"]


def per_seed(rows: dict[str, dict], variant: str, metric: str) -> dict[int, float]:
    """{seed: metric} of one variant's runs (rows as the demo's `per_model`: variant, seed, metrics)."""
    return {r["seed"]: r[metric] for r in rows.values() if r["variant"] == variant and r.get(metric) is not None}


def paired_ablation(rows: dict[str, dict], metric: str, min_gain: float = 0.0, level: float = 0.95,
             pairs: tuple[tuple[str, str], ...] = PAIRS) -> list[dict]:
    """One entry per pair: the per-seed differences of `metric` (first minus second), their mean, the
    paired t and percentile bootstrap intervals, and the verdict on the t interval against `min_gain`."""
    out = []
    for a, b in pairs:
        entry = {"comparison": f"{a} - {b}", "metric": metric, "min_gain": min_gain, "level": level}
        mine, theirs = per_seed(rows, a, metric), per_seed(rows, b, metric)
        if len(mine) < 2:
            diffs = {str(s): mine[s] - theirs[s] for s in mine if s in theirs}  # str keys: as JSON keeps them
            out.append({**entry, "seeds": len(diffs), "differences": diffs, "mean": next(iter(diffs.values()), None),
                        **dict.fromkeys(("t_low", "t_high", "boot_low", "boot_high")),
                        "verdict": "no interval (one seed)"})
            continue
        result = compare(mine, theirs, level, min_gain, what=entry["comparison"])
        t, boot = result["paired_t"], result["bootstrap"]
        out.append({**entry, "seeds": t["n"], "differences": {str(k): v for k, v in result["differences"].items()},
                    "mean": t["mean"],
                    "t_low": t["low"], "t_high": t["high"], "boot_low": boot["low"], "boot_high": boot["high"],
                    "verdict": result["verdict"]})
    return out


def claim(rows: dict[str, dict], reported: str, in_distribution: str, min_gain: float, max_drop: float,
          level: float = 0.95) -> dict:
    """The demo's claim on intervals: SDN beats the baseline on `reported` by more than `min_gain` (lower
    end of the paired interval above it) while its `in_distribution` accuracy drops by less than
    `max_drop` (upper end of the interval of baseline - SDN below it)."""
    gain = paired_ablation(rows, reported, min_gain, level, (("sdn", "baseline"),))[0]
    drop = paired_ablation(rows, in_distribution, 0.0, level, (("baseline", "sdn"),))[0]
    holds = (gain["t_low"] is not None and drop["t_high"] is not None and gain["t_low"] > min_gain
             and drop["t_high"] < max_drop)
    return {"gain": gain, "drop": drop, "min_gain": min_gain, "max_drop": max_drop, "holds": holds}


def ablation_table(entries: list[dict]) -> str:
    """The ablation entries as a markdown table."""
    return table(entries, COLUMNS)


def claim_text(verdict: dict) -> str:
    """One sentence of the claim: SDN's gain on the reporting split and its in-distribution drop, each
    with its paired interval, and whether the claim holds on them."""
    gain, drop = verdict["gain"], verdict["drop"]
    if gain["t_low"] is None:
        return f"no claim: {gain['verdict']}"
    word = "holds" if verdict["holds"] else "does NOT hold"
    return (f"SDN - baseline on ood_test {gain['mean']:+.3f} [{gain['t_low']:+.3f}, {gain['t_high']:+.3f}], "
            f"val drop {drop['mean']:+.3f} [{drop['t_low']:+.3f}, {drop['t_high']:+.3f}] (95 % paired t over "
            f"{gain['seeds']} seeds): the claim (gain above {verdict['min_gain']:.2f}, drop below "
            f"{verdict['max_drop']:.2f}, on the intervals) {word}")
