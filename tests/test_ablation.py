"""The demo's ablation statistics on fabricated runs (no Ray, no training): each function against figures
worked out by hand, and the demo's summary record on disk."""

import math

import pytest

from debias.experiments.ablation import (VARIANTS, aggregate, claim, claim_text, class_drops_over_seeds,
                                         mean_histories, paired_ablation, per_model, separation, variants)
from debias.experiments.ablation import ablation_table
from debias.experiments.demo import DemoResult, read_demo, write_demo
from debias.experiments.stats import mean_std

WEIGHTS = variants(0.5, 1.0)
# ood accuracy per (variant, seed): SDN beats the baseline by 0.2 on seed 0, by 0.0 on seed 1
OOD = {("baseline", 0): 0.2, ("baseline", 1): 0.3, ("scene_only", 0): 0.25, ("scene_only", 1): 0.25,
       ("mask_only", 0): 0.5, ("mask_only", 1): 0.1, ("sdn", 0): 0.4, ("sdn", 1): 0.3}


def fabricated() -> dict:
    results = {}
    for (v, seed), ood in OOD.items():
        final = {"val_acc": 0.9 - 0.01 * seed, "ood_test_acc": ood, "ood_test_scene_acc": 0.5, "val_masked_entropy": 1.0}
        bias = {"scene_probe_acc": 1.0 - ood, "videos": {"test": 10}}
        history = [{"epoch": 0, "train_acc": 0.5 + seed / 10}, {"epoch": 1, "train_acc": 0.7 + seed / 10, "val_acc": 0.9}]
        per_class = [{"class": "a", "drop_ood": 0.6 - ood}, {"class": "b", "drop_ood": 0.1}]
        results[v, seed] = {"final": final, "bias": bias, "history": history, "per_class": per_class}
    return results


def test_mean_std_is_the_sample_statistics():
    assert mean_std([1.0, 2.0, 4.0]) == (pytest.approx(7 / 3), pytest.approx(math.sqrt(7 / 3)))
    assert mean_std([0.5]) == (0.5, 0.0) and mean_std([]) == (None, None)


def test_the_variants_switch_each_loss_alone_and_both():
    assert WEIGHTS == {"baseline": (0.0, 0.0), "scene_only": (0.5, 0.0), "mask_only": (0.0, 1.0), "sdn": (0.5, 1.0)}


def test_per_model_rows_take_each_runs_figures_and_no_adversary_without_the_scene_loss():
    rows = per_model(fabricated(), WEIGHTS)
    assert set(rows) == {f"{v}_seed{s}" for v, s in OOD}
    assert rows["sdn_seed1"]["ood_acc"] == 0.3 and rows["sdn_seed1"]["lambda_scene"] == 0.5
    assert rows["baseline_seed0"]["ood_scene_head_acc"] is None and rows["mask_only_seed0"]["ood_scene_head_acc"] is None
    assert rows["scene_only_seed0"]["ood_scene_head_acc"] == 0.5
    assert "videos" not in rows["sdn_seed0"] and rows["sdn_seed0"]["scene_probe_acc"] == pytest.approx(0.6)


def test_aggregate_and_separation_by_hand():
    rows = per_model(fabricated(), WEIGHTS)
    means = aggregate(rows, ["ood_acc", "val_acc", "scene_probe_acc"])
    assert means["mask_only"]["ood_acc"] == pytest.approx(0.3)
    assert means["mask_only"]["ood_acc_std"] == pytest.approx(math.sqrt(0.08))  # (0.5, 0.1): sample std
    assert means["scene_only"]["ood_acc_std"] == 0.0 and means["sdn"]["ood_acc_values"] == [0.4, 0.3]
    # scene_probe_acc = 1 - ood: baseline 0.75 +- 0.07, SDN 0.65 +- 0.07: the gap 0.1 is within 0.14
    apart = separation(means, {"scene_probe_acc": +1})["scene_probe_acc"]
    assert apart["order"] == ["baseline", "scene_only", "mask_only", "sdn"]  # 0.75, 0.75 (a tie keeps the order), 0.7, 0.65
    assert apart["baseline_vs_sdn"]["gap"] == pytest.approx(0.1)
    assert apart["baseline_vs_sdn"]["spread"] == pytest.approx(2 * math.sqrt(0.005))
    assert not apart["baseline_vs_sdn"]["separated"] and apart["baseline_vs_sdn"]["baseline_more_reliant"]


def test_class_drops_and_curves_are_means_over_seeds():
    results = fabricated()
    drops = class_drops_over_seeds(results, ("baseline", "sdn"))
    by_class = {r["class"]: r for r in drops}
    assert by_class["a"]["baseline_drop_ood"] == pytest.approx(0.35) and by_class["a"]["sdn_drop_ood"] == pytest.approx(0.25)
    assert [r["class"] for r in drops] == ["a", "b"]  # the first variant's largest drop first
    curves = mean_histories(results)
    assert set(curves) == set(VARIANTS)
    assert curves["sdn"][0]["train_acc"] == pytest.approx(0.55) and curves["sdn"][1]["val_acc"] == 0.9


def test_the_demo_record_round_trips_and_a_foreign_file_names_what_it_lacks(tmp_path):
    rows = per_model(fabricated(), WEIGHTS)
    means = aggregate(rows, ["ood_acc"])
    result = DemoResult(provenance={"date": "d", "commit": "c", "machine": "m", "command": "debias demo"},
                        variants=means, claim={"holds": True}, ablation=[], splits={}, separation={}, dataset_bias={},
                        class_drops=[],
                        runs=rows, data={}, timings_s={"total_s": 1.0}, config={})
    path = write_demo(str(tmp_path), result)
    assert read_demo(str(tmp_path)) == result
    (tmp_path / "other.json").write_text('{"date": "d", "claim": {}}')
    with pytest.raises(ValueError, match=r"other\.json: not a demo summary \(missing \['ablation', 'splits'"):
        read_demo(str(tmp_path / "other.json"))
    assert path.endswith("summary.json")


def _rows(ood: dict[str, list[float]], val: dict[str, list[float]]) -> dict[str, dict]:
    return {f"{v}_seed{s}": {"variant": v, "seed": s, "ood_acc": ood[v][s], "val_acc": val[v][s]}
            for v in ood for s in range(len(ood[v]))}


def test_claim_is_read_on_the_paired_interval_not_on_the_means():
    # Seeds move every variant alike; SDN is 0.12 .. 0.14 better than the baseline on each seed.
    seed_effect = [0.1, 0.5, 0.2, 0.4, 0.3]
    ood = {"baseline": seed_effect, "scene_only": seed_effect,
           "mask_only": [x + 0.13 for x in seed_effect], "sdn": [x + g for x, g in zip(seed_effect, [0.12, 0.14, 0.13, 0.12, 0.14])]}
    val = {v: [0.9] * 5 for v in ood}
    rows = _rows(ood, val)
    result = claim(rows, "ood_acc", "val_acc", min_gain=0.10, max_drop=0.05)
    # hand: differences 0.12 0.14 0.13 0.12 0.14: mean 0.13, sd 0.01, half width 2.7764 * 0.01 / sqrt 5 = 0.01242
    assert result["gain"]["mean"] == pytest.approx(0.13)
    assert result["gain"]["t_low"] == pytest.approx(0.13 - 0.01242, abs=1e-4)
    assert result["holds"] and "[+0.118, +0.142]" in claim_text(result) and claim_text(result).endswith("holds")
    by = {e["comparison"]: e for e in paired_ablation(rows, "ood_acc", min_gain=0.05)}
    assert by["sdn - baseline"]["verdict"] == "holds" and by["mask_only - baseline"]["verdict"] == "holds"
    assert by["scene_only - baseline"]["verdict"] == "undecided"  # identical: the interval is [0, 0]
    assert by["sdn - scene_only"]["verdict"] == "holds" and by["sdn - mask_only"]["verdict"] == "undecided"
    assert "sdn - mask_only" in ablation_table(list(by.values()))
    # the same means with the gain on two seeds only: the interval spans the bar, no claim
    lucky = dict(ood, sdn=[x + g for x, g in zip(seed_effect, [0.45, 0.0, 0.0, 0.2, 0.0])])
    assert not claim(_rows(lucky, val), "ood_acc", "val_acc", 0.10, 0.05)["holds"]


def test_a_val_drop_beyond_the_bar_breaks_the_claim_and_one_seed_gives_no_interval():
    ood = {v: [0.2, 0.3, 0.4] for v in ("baseline", "scene_only", "mask_only")} | {"sdn": [0.5, 0.6, 0.7]}
    val = {v: [0.9, 0.9, 0.9] for v in ood} | {"sdn": [0.8, 0.81, 0.79]}
    assert not claim(_rows(ood, val), "ood_acc", "val_acc", 0.10, 0.05)["holds"]
    one = claim(_rows({v: x[:1] for v, x in ood.items()}, {v: x[:1] for v, x in val.items()}),
                "ood_acc", "val_acc", 0.10, 0.05)
    assert not one["holds"] and one["gain"]["verdict"] == "no interval (one seed)"
    assert claim_text(one) == "no claim: no interval (one seed)"
