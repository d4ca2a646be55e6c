"""Dice, HD95 (mm) and NSD (at a tolerance in mm) of one binary mask against its reference, with
MONAI's surface-distance functions on the voxel spacing.

Empty masks follow Metrics Reloaded's rule (Maier-Hein et al., Nature Methods 2024): reference
and prediction both empty is a correct negative and gets the best value of every metric (Dice 1,
NSD 1, HD95 0 mm); only one of them empty gets the worst (Dice 0, NSD 0, HD95 the image's
diagonal in mm, a finite worst case so that no mean is NaN or infinite). Each case says which
rule applied (:attr:`ClassMetrics.empty`), so that reports count them.

HD95 is MONAI's: the larger of the two directed 95th percentiles of the distances from the edge
voxels of one mask to those of the other. NSD is MONAI's ``compute_surface_dice``: the fraction
of both masks' edge voxels within the tolerance of the other mask's edge.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOTH_EMPTY, REF_EMPTY, PRED_EMPTY = "both empty", "reference empty", "prediction empty"


@dataclass(frozen=True)
class ClassMetrics:
    """One case and class: Dice, HD95 in mm, NSD at the tolerance; ``empty`` names the rule of
    the module docstring that set them (None: both masks hold voxels, MONAI measured)."""

    dice: float
    hd95_mm: float
    nsd: float
    empty: str | None = None


def diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The length of the image's diagonal in mm: HD95's worst value."""
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def binary_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                   tolerance_mm: float) -> ClassMetrics:
    """The metrics of boolean masks of one shape (2D or 3D) with ``spacing`` (mm per voxel along
    each axis, in the arrays' axis order)."""
    if reference.shape != prediction.shape:
        raise ValueError(f"reference {reference.shape} and prediction {prediction.shape} differ in shape")
    n_ref, n_pred = int(reference.sum()), int(prediction.sum())
    if n_ref == 0 and n_pred == 0:
        return ClassMetrics(1.0, 0.0, 1.0, BOTH_EMPTY)
    if n_ref == 0 or n_pred == 0:
        return ClassMetrics(0.0, diagonal_mm(reference.shape, spacing), 0.0, REF_EMPTY if n_ref == 0 else PRED_EMPTY)
    dice = 2.0 * int(np.logical_and(reference, prediction).sum()) / (n_ref + n_pred)
    ref, pred = crop_to_union(reference, prediction)
    hd95, nsd = _monai_distances(ref, pred, spacing, tolerance_mm)
    return ClassMetrics(dice, hd95, nsd)


def crop_to_union(reference: np.ndarray, prediction: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to the bounding box of their union, ``margin`` voxels wider where the
    image allows. Edge distances do not change: every edge voxel lies in the box, and the margin
    keeps the masks' edges at the box's faces as they are in the image."""
    union = np.logical_or(reference, prediction)
    box = []
    for axis in range(union.ndim):
        present = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(present[0] - margin, 0), min(present[-1] + 1 + margin, union.shape[axis])))
    return reference[tuple(box)], prediction[tuple(box)]


def _monai_distances(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                     tolerance_mm: float) -> tuple[float, float]:
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    ref = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32))[None, None]
    pred = torch.from_numpy(np.ascontiguousarray(prediction, dtype=np.float32))[None, None]
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():  # MONAI warns of empty masks: none reach it
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)  # MONAI 1.6 calls its own deprecated argument
        hd95 = compute_hausdorff_distance(pred, ref, include_background=True, percentile=95, spacing=spacing)
        nsd = compute_surface_dice(pred, ref, [float(tolerance_mm)], include_background=True, spacing=spacing)
    return float(hd95[0, 0]), float(nsd[0, 0])
