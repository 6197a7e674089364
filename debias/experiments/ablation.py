"""The demo's ablation as plain functions over finished runs: the variants, per-run rows, statistics over
seeds, which measures separate the variants, the claim, the per-class drops. No Ray, no files: the demo
(debias/experiments/demo.py) feeds them its runs' results, the tests fabricated ones."""

from __future__ import annotations

import statistics

from debias.experiments.stats import mean_std

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
    `results`: (variant, seed) -> {"final": the run's last metrics, "bias": its measures};
    `weights`: variant -> (lambda_scene, lambda_mask)."""
    rows = {}
    for (name, seed), r in results.items():
        ls, lm = weights[name]
        final = r["final"]
        rows[f"{name}_seed{seed}"] = {
            "variant": name, "seed": seed, "lambda_scene": ls, "lambda_mask": lm,
            "val_acc": final["val_acc"], "ood_acc": final["ood_acc"],
            # On `ood` the scene is independent of the action, so the scene head's accuracy there is the
            # scene information its adversary still finds. Without the scene loss the head is untrained: n/a.
            "ood_scene_head_acc": final["ood_scene_acc"] if ls > 0 else None,
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


def claim(means: dict[str, dict], rows: dict[str, dict], seeds: list[int], min_ood_gain: float,
          max_val_drop: float) -> dict:
    """The demo's claim on the means over seeds (SDN's ood_acc above the baseline's by `min_ood_gain`, its
    val_acc at most `max_val_drop` lower), the spread beside it, and on how many seeds it holds alone."""
    gain = means["sdn"]["ood_acc"] - means["baseline"]["ood_acc"]
    drop = means["baseline"]["val_acc"] - means["sdn"]["val_acc"]
    per_seed = []
    for seed in seeds:
        s, b = rows[f"sdn_seed{seed}"], rows[f"baseline_seed{seed}"]
        per_seed.append(s["ood_acc"] - b["ood_acc"] >= min_ood_gain and b["val_acc"] - s["val_acc"] <= max_val_drop)
    return {"ood_gain": gain, "val_drop": drop, "min_ood_gain": min_ood_gain, "max_val_drop": max_val_drop,
            "holds": gain >= min_ood_gain and drop <= max_val_drop,
            "ood_acc_std": {v: means[v]["ood_acc_std"] for v in ("baseline", "sdn")},
            "val_acc_std": {v: means[v]["val_acc_std"] for v in ("baseline", "sdn")},
            "holds_on_seeds": sum(per_seed), "seeds": len(per_seed)}


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
