"""Small 3D building blocks shared by the networks. All tensors are (B, C, D, H, W)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

Stride = Sequence[int]  # one stride per spatial axis (D, H, W)


def conv_in_relu(channels: int, kernel_size: int, stride: Stride = (1, 1, 1)) -> nn.Sequential:
    """Conv3d ('same' padding for stride 1, exact halving for stride 2) -> InstanceNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv3d(channels, channels, kernel_size, stride=tuple(stride), padding=kernel_size // 2),
        nn.InstanceNorm3d(channels),
        nn.ReLU(inplace=True),
    )


def transposed_conv_in_relu(channels: int, kernel_size: int, stride: Stride) -> nn.Sequential:
    """ConvTranspose3d that multiplies each axis by its stride exactly -> InstanceNorm -> ReLU."""
    return nn.Sequential(
        nn.ConvTranspose3d(
            channels, channels, kernel_size, stride=tuple(stride), padding=kernel_size // 2,
            output_padding=tuple(s - 1 for s in stride),
        ),
        nn.InstanceNorm3d(channels),
        nn.ReLU(inplace=True),
    )


class MlpChannel(nn.Module):
    """Pointwise MLP: 1x1 conv C -> hidden, GELU, 1x1 conv hidden -> C (SegMamba names fc1/fc2)."""

    def __init__(self, hidden_size: int, mlp_dim: int):
        super().__init__()
        self.fc1 = nn.Conv3d(hidden_size, mlp_dim, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv3d(mlp_dim, hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ResidualBlock(nn.Module):
    """x + Conv3(ReLU(GN(Conv3(ReLU(GN(x)))))), MONAI SegResNet's ResBlock with GroupNorm(8)."""

    def __init__(self, channels: int, num_groups: int = 8):
        super().__init__()
        if channels % num_groups:
            raise ValueError(f"GroupNorm needs channels ({channels}) divisible by num_groups ({num_groups})")
        self.body = nn.Sequential(
            nn.GroupNorm(num_groups, channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(channels, channels, 3, padding=1, bias=False),
            nn.GroupNorm(num_groups, channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(channels, channels, 3, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SkipProjection(nn.Sequential):
    """Encoder output -> InstanceNorm -> MLP(C, 2C), the skip path of SegMamba and SegResMamba."""

    def __init__(self, channels: int):
        super().__init__(nn.InstanceNorm3d(channels), MlpChannel(channels, 2 * channels))


class AdditiveUpBlock(nn.Module):
    """1x1 conv C_in -> C_out, non-trainable trilinear upsampling, + skip, residual block.

    ``forward(x (B, C_in, d, h, w), skip (B, C_out, d*s0, h*s1, w*s2)) -> like skip``.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: Stride):
        super().__init__()
        self.reduce = nn.Conv3d(in_channels, out_channels, 1, bias=False)
        self.upsample = nn.Upsample(scale_factor=tuple(float(s) for s in scale), mode="trilinear", align_corners=False)
        self.refine = ResidualBlock(out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.refine(self.upsample(self.reduce(x)) + skip)


def pad_to_multiple(x: Tensor, divisor: Sequence[int]) -> Tensor:
    """Zero-pads the end of each spatial axis to a multiple of its divisor, at least twice it
    (so the deepest feature map keeps 2 voxels per axis: InstanceNorm needs more than one)."""
    extra = [max(math.ceil(s / d), 2) * d - s for s, d in zip(x.shape[2:], divisor)]
    if not any(extra):
        return x
    return F.pad(x, [p for e in reversed(extra) for p in (0, e)])


def crop_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """The first ``size`` voxels of each spatial axis of x."""
    return x[(..., *(slice(0, s) for s in size))]
