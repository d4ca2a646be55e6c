"""SegResMamba (Das et al., MIDL 2025), built from the paper's text and Algorithm 1.

Encoder: stem Conv3d k7 -> 4 stages (widths 48, 96, 192, 384 at 1/2 .. 1/16), each a
Convolution Mamba Mixed Block and a Conv3d k3; stages 1-3 start with IN -> Conv3d k3 ->
IN -> Conv3d k2 s2. Skips: IN -> MLP(C, 2C). Decoder: three additive up blocks
(1x1 conv, trilinear x2, + skip, residual block) and a ConvTranspose3d to full size.

Strides are per axis so that anisotropic nnU-Net patches such as (40, 224, 192) run
without padding: see :func:`plan_strides`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
from torch import Tensor

from nnunetv2_segresmamba.networks.blocks import (
    AdditiveUpBlock,
    SkipProjection,
    Stride,
    conv_in_relu,
    crop_to,
    pad_to_multiple,
    transposed_conv_in_relu,
)
from nnunetv2_segresmamba.operators.tom import MambaLayer

NUM_STAGES = 4
MIN_PATCH_EDGE = 16


def plan_strides(patch_size: Sequence[int]) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Per-axis strides for the 4 stages and for the stride-2 conv inside each mixed block.

    Along each axis a stage or a mixed block halves its input where that input is even and
    at least 4, so no feature map shrinks below 2 voxels (InstanceNorm needs more than one).
    A patch divisible by 32 and at least 64 gets the paper's network (all strides 2);
    (40, 224, 192) gets depth strides 2, 2, 2, 1 and block depth strides 2, 2, 1, 1.

    Returns:
        (stage_strides, block_strides), each 4 tuples of one stride per axis.
    """
    stage_strides, block_strides = [], []
    sizes = list(patch_size)
    for _ in range(NUM_STAGES):
        stage = _halving_strides(sizes)
        sizes = [size // s for size, s in zip(sizes, stage)]
        stage_strides.append(stage)
        block_strides.append(_halving_strides(sizes))
    return stage_strides, block_strides


def _halving_strides(sizes: Sequence[int]) -> tuple[int, ...]:
    return tuple(2 if size % 2 == 0 and size >= 4 else 1 for size in sizes)


class ConvMambaMixedBlock(nn.Module):
    """Algorithm 1: F1 = Conv5 (stride s), F2 = Conv3, F3 = ToM(F2), F4 = Conv3(F3),
    F5 = ConvT5 (stride s), out = ToM(F5 + X). Every conv is followed by IN and ReLU.

    ``forward(x (B, C, D, H, W)) -> (B, C, D, H, W)``; each axis of x must be divisible by
    its stride.
    """

    def __init__(self, channels: int, stride: Stride = (2, 2, 2), backend: str = "auto"):
        super().__init__()
        self.down = conv_in_relu(channels, 5, stride)
        self.local = conv_in_relu(channels, 3)
        self.mamba_low = MambaLayer(channels, backend=backend)
        self.refine = conv_in_relu(channels, 3)
        self.up = transposed_conv_in_relu(channels, 5, stride)
        self.mamba = MambaLayer(channels, backend=backend)

    def forward(self, x: Tensor) -> Tensor:
        low = self.refine(self.mamba_low(self.local(self.down(x))))
        return self.mamba(self.up(low) + x)


def downsampling(in_channels: int, out_channels: int, stride: Stride) -> nn.Sequential:
    """IN -> Conv3d k3 (the paper's extra conv) -> IN -> Conv3d with kernel = stride."""
    return nn.Sequential(
        nn.InstanceNorm3d(in_channels),
        nn.Conv3d(in_channels, in_channels, 3, padding=1),
        nn.InstanceNorm3d(in_channels),
        nn.Conv3d(in_channels, out_channels, kernel_size=tuple(stride), stride=tuple(stride)),
    )


class SegResMamba(nn.Module):
    """SegResMamba for 3D segmentation.

    Args:
        in_channels: input modalities.
        out_channels: segmentation outputs (classes or regions).
        feature_sizes: widths of the 4 encoder stages.
        stage_strides: per-axis stride of the stem and of the 3 downsamplings;
            default 2 everywhere (the paper).
        block_strides: per-axis stride inside each mixed block; default 2 everywhere.
        backend: ToM backend, "auto", "pure" or "cuda".

    Shapes: ``forward(x (B, in_channels, D, H, W)) -> logits (B, out_channels, D, H, W)``.
    Each axis is zero-padded at its end to a multiple of :attr:`size_divisor` (and to at
    least twice it, so the deepest map keeps 2 voxels per axis) and the logits are cropped
    back. The paper's strides (the default) have divisor 32, so they suit inputs of 64, 96,
    128, ...; :meth:`for_patch_size` picks strides that need no padding for a patch.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        feature_sizes: Sequence[int] = (48, 96, 192, 384),
        stage_strides: Sequence[Stride] | None = None,
        block_strides: Sequence[Stride] | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if len(feature_sizes) != NUM_STAGES:
            raise ValueError(f"feature_sizes needs {NUM_STAGES} widths, got {list(feature_sizes)}")
        stage_strides = _checked_strides(stage_strides, "stage_strides")
        block_strides = _checked_strides(block_strides, "block_strides")
        self.size_divisor = _size_divisor(stage_strides, block_strides)
        widths = list(feature_sizes)

        self.stem = nn.Conv3d(in_channels, widths[0], 7, stride=stage_strides[0], padding=3)
        self.downsamplings = nn.ModuleList(
            downsampling(widths[i - 1], widths[i], stage_strides[i]) for i in range(1, NUM_STAGES)
        )
        self.mixed_blocks = nn.ModuleList(
            ConvMambaMixedBlock(w, s, backend) for w, s in zip(widths, block_strides)
        )
        self.stage_convs = nn.ModuleList(nn.Conv3d(w, w, 3, padding=1) for w in widths)
        self.skips = nn.ModuleList(SkipProjection(w) for w in widths)
        self.up_blocks = nn.ModuleList(
            AdditiveUpBlock(widths[i], widths[i - 1], stage_strides[i]) for i in reversed(range(1, NUM_STAGES))
        )
        self.head = nn.ConvTranspose3d(widths[0], out_channels, stage_strides[0], stride=stage_strides[0])

    @classmethod
    def for_patch_size(cls, in_channels: int, out_channels: int, patch_size: Sequence[int], **kwargs) -> SegResMamba:
        """A SegResMamba whose strides fit ``patch_size`` exactly (see :func:`plan_strides`)."""
        check_patch_size(patch_size)
        stage_strides, block_strides = plan_strides(patch_size)
        return cls(in_channels, out_channels, stage_strides=stage_strides, block_strides=block_strides, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"SegResMamba expects (B, C, D, H, W) input, got shape {tuple(x.shape)}")
        size = x.shape[2:]
        x = pad_to_multiple(x, self.size_divisor)
        skips = []
        for stage in range(NUM_STAGES):
            x = self.stem(x) if stage == 0 else self.downsamplings[stage - 1](x)
            x = self.stage_convs[stage](self.mixed_blocks[stage](x))
            skips.append(self.skips[stage](x))
        x = skips.pop()
        for up_block in self.up_blocks:
            x = up_block(x, skips.pop())
        return crop_to(self.head(x), size)


def check_patch_size(patch_size: Sequence[int]) -> None:
    """Raises a ValueError that says what to change if SegResMamba cannot serve the patch."""
    if len(patch_size) != 3:
        raise ValueError(
            f"SegResMamba is a 3D network but the patch size {list(patch_size)} has {len(patch_size)} axes. "
            "Train a 3D configuration instead, e.g. "
            "`nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerSegResMamba`."
        )
    if min(patch_size) < MIN_PATCH_EDGE:
        raise ValueError(
            f"Patch size {list(patch_size)} is too small for SegResMamba: every axis needs at least "
            f"{MIN_PATCH_EDGE} voxels (four resolution stages). Raise 'patch_size' of this configuration in "
            "nnUNetPlans.json (under nnUNet_preprocessed/DATASET), or use images large enough that nnU-Net "
            f"plans at least {MIN_PATCH_EDGE} voxels per axis."
        )


def _checked_strides(strides: Sequence[Stride] | None, name: str) -> list[tuple[int, ...]]:
    if strides is None:
        return [(2, 2, 2)] * NUM_STAGES
    strides = [tuple(int(s) for s in stride) for stride in strides]
    if len(strides) != NUM_STAGES or any(len(s) != 3 or not set(s) <= {1, 2} for s in strides):
        raise ValueError(f"{name} must be {NUM_STAGES} triples of 1 or 2, got {strides}")
    return strides


def _size_divisor(stage_strides: list[tuple[int, ...]], block_strides: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Smallest per-axis multiple that every stage and mixed block can divide."""
    divisor, reduction = [1, 1, 1], [1, 1, 1]
    for stage, block in zip(stage_strides, block_strides):
        reduction = [r * s for r, s in zip(reduction, stage)]
        divisor = [max(d, r * b) for d, r, b in zip(divisor, reduction, block)]
    return tuple(divisor)
