"""The paired intervals against hand-computed cases."""

import itertools
import math

import pytest

from debias.experiments.stats import bootstrap, compare, paired_differences, paired_t, t_quantile


def test_t_quantile_matches_the_tables():
    # two-sided 95 % critical values of Student's t (any statistics table)
    for dof, value in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)]:
        assert t_quantile(0.975, dof) == pytest.approx(value, abs=1e-3), dof


def test_paired_t_by_hand():
    # variant - baseline per seed: 1, 2, 3, 4, 5 -> mean 3, sd sqrt(2.5), se sqrt(0.5),
    # half width 2.7764 * 0.70711 = 1.96324
    a = {0: 1.5, 1: 2.5, 2: 3.5, 3: 4.5, 4: 5.5}
    b = {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.5, 4: 0.5}
    t = paired_t(list(paired_differences(a, b).values()))
    assert t["mean"] == pytest.approx(3.0) and t["sd"] == pytest.approx(math.sqrt(2.5))
    assert t["low"] == pytest.approx(3.0 - 1.96324, abs=1e-3) and t["high"] == pytest.approx(3.0 + 1.96324, abs=1e-3)


def test_pairing_removes_the_seed_effect():
    # The seed moves both variants alike (0.1 .. 0.5); the variant is always 0.02 better. Unpaired, the
    # stds (0.16) swamp the gap; paired, the interval is 0.02 exactly and the claim holds.
    base = {s: 0.1 * (s + 1) for s in range(5)}
    better = {s: v + 0.02 for s, v in base.items()}
    result = compare(better, base, min_gain=0.01)
    assert result["paired_t"]["low"] == pytest.approx(0.02) and result["verdict"] == "holds"
    assert compare(base, better, min_gain=0.01)["verdict"] == "reversed"
    noisy = {0: 0.05, 1: -0.04, 2: 0.03, 3: -0.02, 4: 0.01}
    assert compare({s: base[s] + noisy[s] for s in base}, base)["verdict"] == "undecided"


def test_bootstrap_matches_the_exact_resampling_distribution():
    diffs = [0.0, 0.1, 0.5]
    # all 27 equally likely resamples of 3 seeds: their means, sorted
    exact = sorted(sum(c) / 3 for c in itertools.product(diffs, repeat=3))
    result = bootstrap(diffs, level=0.5, resamples=200000, seed=1)
    # the 25 % and 75 % points of the exact distribution (27 atoms: the 7th and the 21st)
    assert result["low"] == pytest.approx(exact[6], abs=1e-9) and result["high"] == pytest.approx(exact[20], abs=1e-9)
    two = bootstrap([0.0, 1.0])  # means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    assert (two["low"], two["high"]) == (0.0, 1.0)


def test_unpaired_seeds_and_single_seeds_are_refused():
    with pytest.raises(ValueError, match=r"same seeds.*only in the first \[2\], only in the second \[3\]"):
        paired_differences({0: 1.0, 2: 1.0}, {0: 1.0, 3: 1.0}, "sdn - baseline")
    with pytest.raises(ValueError, match="at least 2 seeds"):
        paired_t([0.1])
    with pytest.raises(ValueError, match="at least 2 seeds"):
        bootstrap([0.1])
