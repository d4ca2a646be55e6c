"""nnU-Net's topology rule, for networks built without a plans file (the registry's builders,
benchmarks, ``SegResMamba.for_patch_size``), and the patch rule of the networks whose layers fix
it (Swin-UMamba's). Trainers read the plans instead. Import-light: no torch, no nnU-Net until
:func:`plan_topology` runs, so that the registry reads it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

BASE_FEATURES = 32  # nnU-Net's UNet_base_num_features
NNUNET_NORM_KWARGS = {"eps": 1e-5, "affine": True}  # nnU-Net's InstanceNorm settings
MAX_FEATURES = {2: 512, 3: 320}  # nnU-Net's UNet_max_features_2d / _3d
SWIN_UMAMBA_DIVISOR = 32  # Swin-UMamba's and Swin-UMamba-dagger's inputs: five halvings (networks.swin_umamba)


class UNetTopology(NamedTuple):
    """What nnU-Net's default planner writes into a configuration's ``architecture``."""

    features_per_stage: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]  # the first is all ones; nnU-Net's pool_op_kernel_sizes
    patch_size: list[int]  # the patch rounded up to a multiple of the strides' product, as nnU-Net's planner does

    def require_patch(self, patch_size: Sequence[int], name: str) -> None:
        """ValueError unless ``patch_size`` is a multiple of the strides' product on every axis."""
        if list(patch_size) != self.patch_size:
            raise ValueError(f"{name} pools {list(patch_size)} with strides {self.strides}: every axis must be a "
                             f"multiple of their product, as nnU-Net's planner makes it; use {self.patch_size}")


def plan_topology(patch_size: Sequence[int], spacing: Sequence[float] | None = None) -> UNetTopology:
    """nnU-Net's U-Net for a 2D or 3D ``patch_size`` at ``spacing`` (default 1 mm): its planner
    pools an axis while it keeps 4 voxels, the finer axes first, with 3x3(x3) kernels (1 on axes
    much coarser than the others), and widths 32 doubling up to 512 (2D) or 320 (3D)."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    spacing = [1.0] * len(patch_size) if spacing is None else list(spacing)
    _, pools, kernels, patch, _ = get_pool_and_conv_props(spacing, list(patch_size), 4, 999999)
    cap = MAX_FEATURES[len(patch_size)]
    features = [min(BASE_FEATURES * 2**i, cap) for i in range(len(pools))]
    return UNetTopology(features, [list(k) for k in kernels], [list(p) for p in pools], [int(s) for s in patch])


def plan_pools(patch_size: Sequence[int], spacing: Sequence[float] | None = None) -> list[tuple[int, ...]]:
    """nnU-Net's ``pool_op_kernel_sizes`` for ``patch_size`` at ``spacing`` (see :func:`plan_topology`)."""
    return [tuple(p) for p in plan_topology(patch_size, spacing).strides]
