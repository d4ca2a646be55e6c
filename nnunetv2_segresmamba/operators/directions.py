"""The ToM's scan directions: one numbering for every backend. Import-light (no torch).

A ToM direction is named by SegMamba's parameter suffix (``conv1d_b``, ``A_s_log``...) and the
fused kernels take it as an integer kind, its index in :data:`DIRECTIONS`. The kernels also
take :data:`INTER_SLICE_REVERSE`, which SS2D (:data:`SS2D_KINDS`) uses and the ToM does not.
"""

from __future__ import annotations

from collections.abc import Sequence

# The kinds the fused numba and Triton kernels take: step k of a direction visits position j,
# with L = S*P (S slices of P positions): forward j = k; reverse j = L-1-k; inter-slice
# j = (k mod S)*P + k div S; inter-slice reverse: the position inter-slice step L-1-k visits.
FORWARD, REVERSE, INTER_SLICE, INTER_SLICE_REVERSE = 0, 1, 2, 3
KINDS = (FORWARD, REVERSE, INTER_SLICE, INTER_SLICE_REVERSE)
DIRECTIONS = ("", "_b", "_s")  # the ToM's suffixes, indexed by kind: forward, reverse, inter-slice
# VMamba's SS2D over an H x W map flattened row-major, with num_slices = H, in the order of its
# x_proj_weight[k]: row-major (hw), column-major (wh), and the reverses of both
SS2D_KINDS = (FORWARD, INTER_SLICE, REVERSE, INTER_SLICE_REVERSE)


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
