"""The ToM's scan directions: one numbering for every backend. Import-light (no torch).

A direction is named by SegMamba's parameter suffix (``conv1d_b``, ``A_s_log``...) and the
fused kernels take it as an integer kind, its index in :data:`DIRECTIONS`.
"""

from __future__ import annotations

from collections.abc import Sequence

FORWARD, REVERSE, INTER_SLICE = 0, 1, 2  # the kinds the fused numba and Triton kernels take
DIRECTIONS = ("", "_b", "_s")  # the suffixes, indexed by kind: forward, reverse, inter-slice


def kinds_of(suffixes: Sequence[str]) -> list[int]:
    """The kinds of the directions named by ``suffixes``."""
    return [DIRECTIONS.index(suffix) for suffix in suffixes]


def check_directions(directions: Sequence[str]) -> tuple[str, ...]:
    """The directions in ``DIRECTIONS`` order; a ValueError for an empty or unknown one."""
    unknown = set(directions) - set(DIRECTIONS)
    if unknown or not directions:
        raise ValueError(f"directions must be a non-empty subset of {DIRECTIONS} "
                         f"('' forward, '_b' reverse, '_s' inter-slice), got {tuple(directions)}")
    return tuple(d for d in DIRECTIONS if d in directions)
