"""The ablation's claims rest on paired intervals over seeds."""

import pytest

from debias.ablation import ablation, ablation_table, claim


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
    assert result["holds"]
    by = {e["comparison"]: e for e in ablation(rows, "ood_acc", min_gain=0.05)}
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
