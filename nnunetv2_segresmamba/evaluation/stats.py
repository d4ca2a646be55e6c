"""Paired statistics of two or more trainers on the same cases: the mean difference with a seeded
bootstrap 95% interval, the Wilcoxon signed-rank p-value (scipy), Holm's correction across
comparisons, wins/ties/losses, and the ranking with its bootstrap stability (as challengeR)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000
SEED = 0


def bootstrap_mean_ci(values: Sequence[float], samples: int = BOOTSTRAP_SAMPLES, seed: int = SEED,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``: ``samples`` resamples of the cases
    with replacement, drawn as one (samples, n) array of indices from ``numpy.random.default_rng(seed)``."""
    x = np.asarray(values, dtype=float)
    indices = np.random.default_rng(seed).integers(0, len(x), size=(samples, len(x)))
    means = x[indices].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (scipy; zero differences
    dropped, as Wilcoxon's original test); 1.0 when every difference is zero."""
    from scipy.stats import wilcoxon

    d = np.asarray(differences, dtype=float)
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the k-th smallest of m is
    multiplied by (m - k + 1), made non-decreasing in that order, capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - k) * p_values[i]))
        adjusted[i] = running
    return adjusted


def wins_ties_losses(differences: Sequence[float], higher_is_better: bool, tie: float = 1e-9) -> tuple[int, int, int]:
    """Cases where the first trainer is better, equal (within ``tie``), worse."""
    d = np.asarray(differences, dtype=float) * (1 if higher_is_better else -1)
    return int((d > tie).sum()), int((np.abs(d) <= tie).sum()), int((d < -tie).sum())


@dataclass(frozen=True)
class Paired:
    """``trainer`` minus ``reference`` on ``cases`` shared cases (p_holm filled in by :func:`compare`)."""

    trainer: str
    reference: str
    cases: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p: float
    wins: int
    ties: int
    losses: int
    p_holm: float | None = None


def paired(trainer: str, reference: str, values: Sequence[float], reference_values: Sequence[float],
           higher_is_better: bool, seed: int = SEED) -> Paired:
    d = np.asarray(values, dtype=float) - np.asarray(reference_values, dtype=float)
    low, high = bootstrap_mean_ci(d, seed=seed)
    return Paired(trainer, reference, len(d), float(d.mean()), low, high, wilcoxon_p(d),
                  *wins_ties_losses(d, higher_is_better))


def compare(pairs: Sequence[tuple[str, str]], scores: Mapping[str, Sequence[float]], higher_is_better: bool,
            seed: int = SEED) -> list[Paired]:
    """Each (trainer, reference) of ``pairs`` on the cases of ``scores`` (one value per case, the
    same cases in the same order for every trainer), Holm-corrected across the pairs."""
    found = [paired(t, r, scores[t], scores[r], higher_is_better, seed) for t, r in pairs]
    return [Paired(**{**p.__dict__, "p_holm": q}) for p, q in zip(found, holm([p.p for p in found]))]


def case_ranks(scores: Mapping[str, Sequence[float]], higher_is_better: bool) -> dict[str, np.ndarray]:
    """The rank of each trainer in each case (1: best; ties share their mean rank)."""
    from scipy.stats import rankdata

    names = list(scores)
    table = np.array([scores[n] for n in names], dtype=float)  # (trainers, cases)
    ranks = rankdata(-table if higher_is_better else table, axis=0)
    return {n: ranks[i] for i, n in enumerate(names)}


def rank_stability(scores: Mapping[str, Sequence[float]], higher_is_better: bool, samples: int = BOOTSTRAP_SAMPLES,
                   seed: int = SEED) -> dict[str, float]:
    """How often each trainer has the best mean rank over ``samples`` bootstrap resamples of the
    cases (rank per case, then mean; a tie for first shares the count)."""
    ranks = case_ranks(scores, higher_is_better)
    names = list(ranks)
    table = np.array([ranks[n] for n in names])  # (trainers, cases)
    indices = np.random.default_rng(seed).integers(0, table.shape[1], size=(samples, table.shape[1]))
    mean_ranks = table[:, indices].mean(axis=2)  # (trainers, samples)
    best = mean_ranks == mean_ranks.min(axis=0, keepdims=True)
    share = (best / best.sum(axis=0, keepdims=True)).sum(axis=1) / samples
    return {n: float(s) for n, s in zip(names, share)}
