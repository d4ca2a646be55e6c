"""Paired statistics against scipy and plain loops on fixed numbers, and Holm on a textbook example."""

import itertools

import numpy as np
import pytest

from nnunetv2_segresmamba.evaluation.stats import (
    bootstrap_mean_ci,
    case_ranks,
    compare,
    holm,
    rank_stability,
    wilcoxon_p,
    wins_ties_losses,
)

DIFFS = [0.031, -0.012, 0.044, 0.005, 0.027, -0.019, 0.013, 0.038, 0.002, 0.021, -0.007]  # 11 cases, no ties


def test_wilcoxon_matches_the_exact_distribution_counted_by_hand():
    """Exact two-sided p: the share of the 2^n sign flips whose positive rank sum is at least as
    extreme as the observed one."""
    ranks = np.argsort(np.argsort(np.abs(DIFFS))) + 1
    observed = sum(r for r, d in zip(ranks, DIFFS) if d > 0)
    centre = len(DIFFS) * (len(DIFFS) + 1) / 4
    extreme = sum(abs(sum(r for r, s in zip(ranks, signs) if s) - centre) >= abs(observed - centre)
                  for signs in itertools.product((0, 1), repeat=len(DIFFS)))
    assert wilcoxon_p(DIFFS) == pytest.approx(extreme / 2 ** len(DIFFS))
    from scipy.stats import wilcoxon

    assert wilcoxon_p(DIFFS) == pytest.approx(wilcoxon(DIFFS).pvalue)
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0


def test_bootstrap_interval_matches_a_plain_loop_over_the_same_draws():
    rng = np.random.default_rng(7)
    indices = rng.integers(0, len(DIFFS), size=(500, len(DIFFS)))
    means = sorted(sum(DIFFS[i] for i in row) / len(row) for row in indices)
    low, high = bootstrap_mean_ci(DIFFS, samples=500, seed=7)
    assert low == pytest.approx(np.percentile(means, 2.5)) and high == pytest.approx(np.percentile(means, 97.5))
    assert low < np.mean(DIFFS) < high
    assert bootstrap_mean_ci(DIFFS, samples=500, seed=7) == (low, high)  # seeded
    assert bootstrap_mean_ci(DIFFS, samples=500, seed=8) != (low, high)


def test_holm_on_a_textbook_example():
    """p = 0.01, 0.04, 0.03, 0.005 (m = 4): sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 gives
    0.02, 0.03, 0.06, 0.04, made non-decreasing: 0.02, 0.03, 0.06, 0.06."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_wins_ties_losses_follow_the_metric_direction():
    d = [0.1, 0.0, -0.2, 0.3]
    assert wins_ties_losses(d, higher_is_better=True) == (2, 1, 1)
    assert wins_ties_losses(d, higher_is_better=False) == (1, 1, 2)


def test_compare_pairs_holm_corrects_and_ranks():
    scores = {"a": [0.9, 0.8, 0.85, 0.7], "b": [0.8, 0.8, 0.80, 0.6], "c": [0.5, 0.9, 0.70, 0.65]}
    found = compare([("b", "a"), ("c", "a")], scores, higher_is_better=True)
    assert [p.mean_difference for p in found] == pytest.approx([-0.0625, -0.125])
    assert [p.p_holm for p in found] == pytest.approx(holm([p.p for p in found]))
    assert (found[0].wins, found[0].ties, found[0].losses) == (0, 1, 3)
    ranks = case_ranks(scores, higher_is_better=True)
    assert list(ranks["a"]) == [1, 2.5, 1, 1] and list(ranks["c"]) == [3, 1, 3, 2]
    stability = rank_stability(scores, higher_is_better=True, samples=300)
    assert sum(stability.values()) == pytest.approx(1.0) and stability["a"] > 0.5
    assert rank_stability({"x": [1.0, 2.0], "y": [2.0, 3.0]}, higher_is_better=False, samples=50) == {"x": 1.0,
                                                                                                      "y": 0.0}
