"""SegResMamba (Das et al., MIDL 2025), built from the paper's text and Algorithm 1.

Encoder: stem Conv3d k7 -> 4 stages (widths 48, 96, 192, 384 at 1/2 .. 1/16), each a
Convolution Mamba Mixed Block and a Conv3d k3; stages 1-3 start with IN -> Conv3d k3 ->
IN -> Conv3d k2 s2. Skips: IN -> MLP(C, 2C). Decoder: three additive up blocks
(1x1 conv, trilinear x2, + skip, residual block) and a ConvTranspose3d to full size.

Strides are per axis and follow nnU-Net's plan (``pool_op_kernel_sizes``), so that
anisotropic patches such as (20, 320, 256) at 3 x 0.8 x 0.8 mm are pooled in-plane first and
run without padding: see :func:`strides_from_pools`.

The same network in 2D (``spatial_dims=2``, for nnU-Net's ``2d`` configuration; the paper is
3D only): Conv2d, InstanceNorm2d and bilinear upsampling in place of their 3D twins, the same
stages, kernels and parameter names. The ToM scans the flattened image (row-major) forward
and reverse, and its third direction, inter-slice in 3D, becomes inter-row: it visits the
same column of every row in turn (column-major), as inter-slice visits the same in-plane
position of every slice. The ToM's parameters do not depend on the dimensionality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch.nn as nn
from torch import Tensor

from nnunetv2_segresmamba.networks.blocks import (
    SPATIAL_DIMS,
    AdditiveUpBlock,
    SkipProjection,
    Stride,
    checkpointed,
    conv_in_relu,
    crop_to,
    layers,
    pad_to_multiple,
    padded_size,
    transposed_conv_in_relu,
)
from nnunetv2_segresmamba.networks.planning import plan_pools
from nnunetv2_segresmamba.operators.directions import DIRECTIONS, check_directions
from nnunetv2_segresmamba.operators.tom import MambaLayer

NUM_STAGES = 4
NUM_HALVINGS = NUM_STAGES + 1  # stem, 3 downsamplings and the deepest mixed block
PAPER_FEATURE_SIZES = (48, 96, 192, 384)
Strides = list[tuple[int, ...]]  # one per-axis stride for each of the 4 stages (or mixed blocks)


def strides_from_pools(pool_op_kernel_sizes: Sequence[Sequence[int]]) -> tuple[Strides, Strides]:
    """SegResMamba's per-axis strides from nnU-Net's plan (``pool_op_kernel_sizes``).

    nnU-Net's stage 0 has stride 1 and its pooling p1, p2, ... follows. p1 is the stem's
    stride, p2..p4 those of the three downsamplings, p5 that of the deepest mixed block;
    mixed block i < 4 halves as the next stage does (p_{i+1}), to the size that stage has.
    Pools missing from a shallow plan are 1; pools beyond p5 are not used (SegResMamba halves
    five times at most, so its deepest map is then larger than nnU-Net's bottleneck).
    Anisotropic plans pool the fine in-plane axes first, and so does SegResMamba. For 128^3
    (five pools of 2) this is the paper's network, all strides 2. A 2D plan (``2d``, pools of
    two axes) maps the same way.

    Args:
        pool_op_kernel_sizes: nnU-Net's per-stage strides, first all 1 ([1, 1, 1] in 3D,
            [1, 1] in 2D), then 1 or 2 per axis.

    Returns:
        (stage_strides, block_strides), each 4 tuples of one stride per axis.
    """
    pools = [tuple(int(s) for s in p) for p in pool_op_kernel_sizes]
    dims = len(pools[0]) if pools else 0
    if (dims not in SPATIAL_DIMS or any(len(p) != dims or not set(p) <= {1, 2} for p in pools)
            or set(pools[0]) != {1}):
        raise ValueError(
            f"SegResMamba maps a 2D or 3D nnU-Net plan whose pool_op_kernel_sizes start with all 1 ([1, 1, 1] or "
            f"[1, 1]) and pool by 1 or 2 per axis, got {[list(p) for p in pools]}. Plan the dataset with nnU-Net's "
            "default planner (nnUNetv2_plan_and_preprocess -c 3d_fullres or -c 2d)."
        )
    halvings = (pools[1:] + [(1,) * dims] * NUM_HALVINGS)[:NUM_HALVINGS]
    stage_strides = halvings[:NUM_STAGES]
    return stage_strides, stage_strides[1:] + halvings[NUM_STAGES:]


def arch_kwargs_for_plan(pool_op_kernel_sizes: Sequence[Sequence[int]], patch_size: Sequence[int],
                         tom_directions: Sequence[str] = DIRECTIONS,
                         feature_sizes: Sequence[int] = PAPER_FEATURE_SIZES) -> dict:
    """The SegResMamba arguments for a configuration of nnU-Net's plans: strides from
    :func:`strides_from_pools`, the patch, the ToM's directions, the widths and the
    dimensionality (the patch's). ``SegResMamba(in_channels, out_channels, **kwargs)``; the
    network's :attr:`SegResMamba.arch_kwargs` are the same, in JSON form, and ``checkpointing``."""
    stage_strides, block_strides = strides_from_pools(pool_op_kernel_sizes)
    return {"feature_sizes": feature_sizes, "stage_strides": stage_strides, "block_strides": block_strides,
            "tom_directions": tom_directions, "patch_size": patch_size, "spatial_dims": len(patch_size)}


class ConvMambaMixedBlock(nn.Module):
    """Algorithm 1: F1 = Conv5 (stride s), F2 = Conv3, F3 = ToM(F2), F4 = Conv3(F3),
    F5 = ConvT5 (stride s), out = ToM(F5 + X). Every conv is followed by IN and ReLU.

    ``forward(x (B, C, D, H, W)) -> (B, C, D, H, W)`` (in 2D (B, C, H, W)); each axis of x
    must be divisible by its stride. ``tom_directions`` are the ToM's scans (see
    :data:`DIRECTIONS`); empty replaces both ToMs by identity (the NoToM ablation).
    ``checkpointing``: while training, F1-F2 and F4-F5 + X are checkpointed segments and each
    ToM checkpoints its directions one by one (:class:`~nnunetv2_segresmamba.operators.tom.MambaLayer`).
    """

    def __init__(self, channels: int, stride: Stride = (2, 2, 2), backend: str = "auto",
                 tom_directions: Sequence[str] = DIRECTIONS, spatial_dims: int = 3, checkpointing: bool = False):
        super().__init__()
        self.checkpointing = checkpointing
        self.down = conv_in_relu(channels, 5, stride, spatial_dims)
        self.local = conv_in_relu(channels, 3, spatial_dims=spatial_dims)
        self.mamba_low = tom_or_identity(channels, backend, tom_directions, checkpointing)
        self.refine = conv_in_relu(channels, 3, spatial_dims=spatial_dims)
        self.up = transposed_conv_in_relu(channels, 5, stride, spatial_dims)
        self.mamba = tom_or_identity(channels, backend, tom_directions, checkpointing)

    def forward(self, x: Tensor) -> Tensor:
        run = partial(checkpointed, enabled=self.checkpointing)
        low = self.mamba_low(run(self._down_local, x))
        return self.mamba(run(self._refine_up_add, low, x))

    def _down_local(self, x: Tensor) -> Tensor:
        return self.local(self.down(x))

    def _refine_up_add(self, low: Tensor, x: Tensor) -> Tensor:
        return self.up(self.refine(low)) + x


def tom_or_identity(channels: int, backend: str, directions: Sequence[str], checkpointing: bool = False) -> nn.Module:
    """A :class:`MambaLayer` scanning ``directions`` (direction by direction under ``checkpointing``),
    or identity when there are none."""
    if not directions:
        return nn.Identity()
    return MambaLayer(channels, backend=backend, directions=directions, checkpointing=checkpointing)


def downsampling(in_channels: int, out_channels: int, stride: Stride, spatial_dims: int = 3) -> nn.Sequential:
    """IN -> Conv k3 (the paper's extra conv) -> IN -> Conv with kernel = stride."""
    ops = layers(spatial_dims)
    return nn.Sequential(
        ops.instance_norm(in_channels),
        ops.conv(in_channels, in_channels, 3, padding=1),
        ops.instance_norm(in_channels),
        ops.conv(in_channels, out_channels, kernel_size=tuple(stride), stride=tuple(stride)),
    )


class SegmentationHead(nn.Module):
    """ConvTranspose with kernel = stride = the stem's, from the first stage's width to the
    outputs at full resolution: ``(B, C, *spatial) -> (B, out_channels, *spatial * stride)``.
    Named ``seg_layers`` as nnU-Net names its output layers; the registry declares it the
    output layer, which ``-pretrained_weights`` leaves out (:mod:`~nnunetv2_segresmamba.trainers.fine_tuning`)."""

    def __init__(self, in_channels: int, out_channels: int, stride: Stride, spatial_dims: int = 3):
        super().__init__()
        stride = tuple(stride)
        self.seg_layers = layers(spatial_dims).conv_transpose(in_channels, out_channels, stride, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.seg_layers(x)


class SegResMamba(nn.Module):
    """SegResMamba for 3D (the paper) or 2D segmentation.

    Args:
        in_channels: input modalities.
        out_channels: segmentation outputs (classes or regions).
        feature_sizes: widths of the 4 encoder stages.
        stage_strides: per-axis stride of the stem and of the 3 downsamplings;
            default 2 everywhere (the paper).
        block_strides: per-axis stride inside each mixed block; default 2 everywhere.
        backend: ToM backend, one of ``operators.backends.BACKENDS`` ("auto" by default).
        tom_directions: the ToM's scans, a subset of ("", "_b", "_s") (forward, reverse,
            inter-slice; all three in the paper). Empty: every ToM is identity (NoToM ablation).
        patch_size: the (D, H, W) (2D: (H, W)) patch the network is trained on, or None. When
            given, it is checked against the strides (:func:`check_patch_size`).
        spatial_dims: 3 (the paper) or 2: Conv2d, InstanceNorm2d and bilinear upsampling,
            strides of two axes, and the ToM's inter-slice scan running across rows (see the
            module's docstring). Parameter names are the same in both.
        checkpointing: activation checkpointing while training (:func:`~.blocks.checkpointed`):
            the stem, each downsampling, stage conv, skip projection and decoder block, the
            mixed blocks' convolutions before and after their low-resolution ToM, and each
            direction of every ToM keep only their inputs for the backward pass and run again
            there. Less training memory (the largest segment recomputed is one direction of the
            first stage's ToM) for one more forward pass and a little more (each direction's
            conv input runs a third time); the same parameter names, so weights trained either
            way load into both; outputs and gradients equal to fp32 rounding (see
            :class:`~nnunetv2_segresmamba.operators.tom.MambaLayer`), exactly without ToMs.
            Without grad (validation, inference) nothing changes.

    Shapes: ``forward(x (B, in_channels, D, H, W)) -> logits (B, out_channels, D, H, W)``;
    in 2D ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.
    Each axis is zero-padded at its end as :func:`~.blocks.padded_size` says (a multiple of
    :attr:`size_divisor`, with 2 voxels left in the deepest map on every pooled axis) and the
    logits are cropped back. The paper's strides (the default) have divisor 32, so they suit
    inputs of 64, 96, 128, ...; :meth:`for_patch_size` plans strides as nnU-Net pools such a
    patch.

    :attr:`arch_kwargs` are the arguments above in JSON form (``backend`` is a runtime choice,
    not architecture; ``checkpointing`` is recorded, but a checkpoint loads whatever it says);
    the trainers store them in every checkpoint, beside the weights. The
    output layer is ``head.seg_layers``, which ``-pretrained_weights`` does not transfer (the
    registry's ``output_layers``), so a network fine-tunes on a dataset with other classes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        feature_sizes: Sequence[int] = PAPER_FEATURE_SIZES,
        stage_strides: Sequence[Stride] | None = None,
        block_strides: Sequence[Stride] | None = None,
        backend: str = "auto",
        tom_directions: Sequence[str] = DIRECTIONS,
        patch_size: Sequence[int] | None = None,
        spatial_dims: int = 3,
        checkpointing: bool = False,
    ):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if len(feature_sizes) != NUM_STAGES:
            raise ValueError(f"feature_sizes needs {NUM_STAGES} widths, got {list(feature_sizes)}")
        ops = layers(spatial_dims)
        stage_strides = _checked_strides(stage_strides, "stage_strides", spatial_dims)
        block_strides = _checked_strides(block_strides, "block_strides", spatial_dims)
        tom_directions = check_directions(tom_directions) if tom_directions else ()
        self.spatial_dims = spatial_dims
        self.checkpointing = bool(checkpointing)
        self.size_divisor = _size_divisor(stage_strides, block_strides)
        if patch_size is not None:
            check_patch_size(patch_size, self.size_divisor)
        widths = [int(w) for w in feature_sizes]
        self.arch_kwargs = {
            "feature_sizes": widths, "stage_strides": [list(s) for s in stage_strides],
            "block_strides": [list(s) for s in block_strides], "tom_directions": list(tom_directions),
            "patch_size": None if patch_size is None else [int(s) for s in patch_size], "spatial_dims": spatial_dims,
            "checkpointing": self.checkpointing,
        }

        self.stem = ops.conv(in_channels, widths[0], 7, stride=stage_strides[0], padding=3)
        self.downsamplings = nn.ModuleList(
            downsampling(widths[i - 1], widths[i], stage_strides[i], spatial_dims) for i in range(1, NUM_STAGES)
        )
        self.mixed_blocks = nn.ModuleList(
            ConvMambaMixedBlock(w, s, backend, tom_directions, spatial_dims, self.checkpointing)
            for w, s in zip(widths, block_strides)
        )
        self.stage_convs = nn.ModuleList(ops.conv(w, w, 3, padding=1) for w in widths)
        self.skips = nn.ModuleList(SkipProjection(w, spatial_dims) for w in widths)
        self.up_blocks = nn.ModuleList(
            AdditiveUpBlock(widths[i], widths[i - 1], stage_strides[i], spatial_dims)
            for i in reversed(range(1, NUM_STAGES))
        )
        self.head = SegmentationHead(widths[0], out_channels, stage_strides[0], spatial_dims)

    @classmethod
    def for_patch_size(cls, in_channels: int, out_channels: int, patch_size: Sequence[int],
                       spacing: Sequence[float] | None = None, **kwargs) -> SegResMamba:
        """A 3D or 2D SegResMamba (as ``patch_size`` has 3 or 2 axes) for ``patch_size``, strided
        as nnU-Net's planner pools that patch at ``spacing`` (default 1 mm; :func:`plan_pools`,
        :func:`strides_from_pools`)."""
        spacing = [1.0] * len(patch_size) if spacing is None else list(spacing)
        if len(patch_size) not in SPATIAL_DIMS or len(spacing) != len(patch_size):
            check_patch_size(patch_size, (1,) * len(patch_size))
            raise ValueError(f"spacing needs one value in mm per axis of the patch {list(patch_size)}, "
                             f"got {list(spacing)}")
        planned = arch_kwargs_for_plan(plan_pools(patch_size, spacing), patch_size)
        return cls(in_channels, out_channels, **{**planned, **kwargs})

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != self.spatial_dims + 2:
            axes = "(B, C, D, H, W)" if self.spatial_dims == 3 else "(B, C, H, W)"
            raise ValueError(f"This {self.spatial_dims}D SegResMamba expects {axes} input, got shape "
                             f"{tuple(x.shape)}; build it with spatial_dims={x.dim() - 2} for that input")
        size = x.shape[2:]
        run = partial(checkpointed, enabled=self.checkpointing)
        x = pad_to_multiple(x, self.size_divisor)
        stage_outputs = []
        for stage in range(NUM_STAGES):
            x = run(self.stem if stage == 0 else self.downsamplings[stage - 1], x)
            x = run(self.stage_convs[stage], self.mixed_blocks[stage](x))  # the mixed block checkpoints its parts
            stage_outputs.append(x)
        x = run(self.skips[-1], stage_outputs.pop())
        for up_block, stage in zip(self.up_blocks, reversed(range(NUM_STAGES - 1)), strict=True):
            x = run(self._decoder_block, up_block, stage, x, stage_outputs.pop())
        return crop_to(self.head(x), size)

    def _decoder_block(self, up_block: nn.Module, stage: int, x: Tensor, stage_output: Tensor) -> Tensor:
        """``up_block`` on x and the skip of encoder stage ``stage`` (projected here, so that with
        checkpointing only the stage's output is kept for the backward pass)."""
        return up_block(x, self.skips[stage](stage_output))


def check_patch_size(patch_size: Sequence[int], size_divisor: Sequence[int]) -> None:
    """Raises a ValueError that says what to change in the plans if strides with
    ``size_divisor`` (see :attr:`SegResMamba.size_divisor`) cannot serve ``patch_size``.

    Served: a patch with as many axes as the divisor (2 or 3) that the forward pass does not
    pad (:func:`~.blocks.padded_size`): every axis a multiple of its divisor, with 2 voxels left
    in the deepest feature map on every pooled axis, and more than one voxel there in all
    (InstanceNorm). Thin axes are fine: an axis that nnU-Net does not pool has divisor 1, down
    to 1 voxel.
    """
    if len(patch_size) not in SPATIAL_DIMS:
        raise ValueError(
            f"SegResMamba is a 2D or 3D network but the patch size {list(patch_size)} has {len(patch_size)} axes. "
            "Train a 2D or 3D configuration, e.g. "
            "`nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerSegResMamba`."
        )
    if len(patch_size) != len(size_divisor):
        raise ValueError(f"The patch size {list(patch_size)} has {len(patch_size)} axes but this SegResMamba is "
                         f"{len(size_divisor)}D; build it with spatial_dims={len(patch_size)} "
                         "(SegResMamba.for_patch_size does).")
    where = ("Change 'patch_size' or 'pool_op_kernel_sizes' (under 'architecture' -> 'arch_kwargs' -> "
             "'strides') of this configuration in its plans (nnUNet_preprocessed/DATASET/PLANS.json for "
             "nnUNetv2_train, the run's plans.json for nnUNetv2_predict), or re-plan with "
             "nnUNetv2_plan_experiment, whose plans always fit.")
    served = padded_size([max(1, int(s)) for s in patch_size], size_divisor)
    if list(patch_size) != served:
        raise ValueError(f"Patch size {list(patch_size)} is not served by SegResMamba's strides: each axis must be "
                         f"a multiple of {list(size_divisor)} (the product of its pooling) and keep 2 voxels in the "
                         f"deepest feature map where it is pooled, e.g. {served}; or pool one axis less. {where}")
    if math.prod(s // d for s, d in zip(patch_size, size_divisor)) < 2:
        raise ValueError(f"Patch size {list(patch_size)} pooled by {list(size_divisor)} leaves a single voxel in the "
                         f"deepest feature map, where InstanceNorm needs two. {where}")


def _checked_strides(strides: Sequence[Stride] | None, name: str, spatial_dims: int) -> list[tuple[int, ...]]:
    if strides is None:
        return [(2,) * spatial_dims] * NUM_STAGES
    strides = [tuple(int(s) for s in stride) for stride in strides]
    if len(strides) != NUM_STAGES or any(len(s) != spatial_dims or not set(s) <= {1, 2} for s in strides):
        kind = "triples" if spatial_dims == 3 else "pairs"
        raise ValueError(f"{name} must be {NUM_STAGES} {kind} of 1 or 2 (one per axis, spatial_dims={spatial_dims}), "
                         f"got {strides}")
    return strides


def _size_divisor(stage_strides: list[tuple[int, ...]], block_strides: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Smallest per-axis multiple that every stage and mixed block can divide."""
    divisor, reduction = [1] * len(stage_strides[0]), [1] * len(stage_strides[0])
    for stage, block in zip(stage_strides, block_strides):
        reduction = [r * s for r, s in zip(reduction, stage)]
        divisor = [max(d, r * b) for d, r, b in zip(divisor, reduction, block)]
    return tuple(divisor)
