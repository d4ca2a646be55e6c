"""A synthetic nnU-Net raw dataset that a small network learns in minutes on a CPU.

Each case holds one ellipsoid per foreground class at a random place, apart from the others
where there is room, with a class-specific mean intensity, on a noisy background. Channels
repeat the image with other gains and noise. Images are NIfTI with the requested spacing;
``imagesTs``/``labelsTs`` hold held-out cases for evaluation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_DATASET_ID = 990
DEFAULT_NAME = "SynthEllipsoids"


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. ``shape`` and ``spacing`` are (z, y, x) in voxels and mm."""

    dataset_id: int = DEFAULT_DATASET_ID
    name: str = DEFAULT_NAME
    num_train: int = 10
    num_test: int = 2
    shape: Sequence[int] = (32, 48, 48)
    spacing: Sequence[float] = (1.0, 1.0, 1.0)
    num_classes: int = 3
    num_channels: int = 1
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.dataset_id <= 999:
            raise ValueError(f"dataset_id must be in 1..999, got {self.dataset_id}")
        if len(self.shape) != 3 or min(self.shape) < 16:
            raise ValueError(f"shape must be 3 sizes of at least 16 voxels, got {list(self.shape)}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive values, got {list(self.spacing)}")
        if self.num_classes < 1 or self.num_channels < 1 or self.num_train < 2:
            raise ValueError("need num_classes >= 1, num_channels >= 1 and num_train >= 2")

    @property
    def folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.name}"


def make_dataset(raw_dir: str, spec: SyntheticSpec = SyntheticSpec(), overwrite: bool = False) -> str:
    """Writes ``raw_dir/DatasetXXX_Name`` and returns its path. Refuses to overwrite."""
    import SimpleITK as sitk

    folder = os.path.join(raw_dir, spec.folder_name)
    if os.path.exists(folder) and not overwrite:
        raise FileExistsError(f"{folder} already exists; pick another --dataset-id or remove it first")
    rng = np.random.default_rng(spec.seed)
    for split, count in (("Tr", spec.num_train), ("Ts", spec.num_test)):
        os.makedirs(os.path.join(folder, f"images{split}"), exist_ok=True)
        os.makedirs(os.path.join(folder, f"labels{split}"), exist_ok=True)
        for index in range(count):
            case = f"{spec.name.lower()}_{split.lower()}{index:03d}"
            channels, label = synthesize_case(spec, rng)
            for c, image in enumerate(channels):
                image_path = os.path.join(folder, f"images{split}", f"{case}_{c:04d}.nii.gz")
                _write_nifti(sitk, image, spec.spacing, image_path)
            _write_nifti(sitk, label, spec.spacing, os.path.join(folder, f"labels{split}", f"{case}.nii.gz"))
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json(spec), f, indent=2)
    return folder


def dataset_json(spec: SyntheticSpec) -> dict:
    return {
        "channel_names": {str(c): f"synthetic{c}" for c in range(spec.num_channels)},
        "labels": {"background": 0, **{f"class{k}": k for k in range(1, spec.num_classes + 1)}},
        "numTraining": spec.num_train,
        "file_ending": ".nii.gz",
        "name": spec.name,
        "description": "Synthetic ellipsoids made by nnunetv2_segresmamba make-dataset",
    }


def synthesize_case(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """(channels of float32 images, uint8 label map), each of ``spec.shape``."""
    shape = np.array(spec.shape)
    physical = [np.arange(s) * sp for s, sp in zip(shape, spec.spacing)]
    grid = np.stack(np.meshgrid(*physical, indexing="ij"), axis=-1)  # (z, y, x, 3) in mm
    extent = shape * np.array(spec.spacing)
    label = np.zeros(spec.shape, dtype=np.uint8)
    intensity = np.zeros(spec.shape, dtype=np.float32)
    for k in range(1, spec.num_classes + 1):
        inside = place_ellipsoid(grid, extent, label == 0, rng)
        label[inside] = k
        intensity[inside] = k
    channels = [
        (intensity * (1 + 0.5 * c) + rng.normal(0, 0.25, size=spec.shape)).astype(np.float32)
        for c in range(spec.num_channels)
    ]
    return channels, label


def place_ellipsoid(grid: np.ndarray, extent: np.ndarray, free: np.ndarray, rng: np.random.Generator,
                    attempts: int = 50) -> np.ndarray:
    """The mask of an ellipsoid with radii 15-25% of the ``extent`` (mm) on ``grid`` (z, y, x, 3),
    placed inside the volume where it covers only ``free`` voxels if one of ``attempts`` random
    centres allows it (else overlapping, at the last centre)."""
    radii = extent * rng.uniform(0.15, 0.25, size=3)
    for _ in range(attempts):
        center = rng.uniform(radii, extent - radii)
        inside = (((grid - center) / radii) ** 2).sum(-1) <= 1
        if free[inside].all():
            break
    return inside


def _write_nifti(sitk, array: np.ndarray, spacing: Sequence[float], path: str) -> None:
    image = sitk.GetImageFromArray(array)  # numpy (z, y, x) -> ITK (x, y, z)
    image.SetSpacing([float(s) for s in reversed(spacing)])
    sitk.WriteImage(image, path, useCompression=True)
