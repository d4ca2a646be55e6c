"""Small building blocks shared by the networks, in 2D or 3D (``spatial_dims``, as in MONAI).

Tensors are (B, C, D, H, W) in 3D and (B, C, H, W) in 2D; the layers of each come from
:func:`layers`. Every block defaults to 3D.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Stride = Sequence[int]  # one stride per spatial axis ((D,) H, W)
SPATIAL_DIMS = (2, 3)
T = TypeVar("T")


class Layers(NamedTuple):
    """The layers of one dimensionality."""

    conv: type[nn.Module]
    conv_transpose: type[nn.Module]
    instance_norm: type[nn.Module]
    interpolation: str  # nn.Upsample's mode


def layers(spatial_dims: int) -> Layers:
    """Conv, ConvTranspose, InstanceNorm and linear interpolation for 2 or 3 spatial dims."""
    if spatial_dims == 2:
        return Layers(nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, "bilinear")
    if spatial_dims == 3:
        return Layers(nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d, "trilinear")
    raise ValueError(f"spatial_dims must be one of {SPATIAL_DIMS} (2D or 3D images), got {spatial_dims!r}")


def conv_in_relu(channels: int, kernel_size: int, stride: Stride | int = 1, spatial_dims: int = 3) -> nn.Sequential:
    """Conv ('same' padding for stride 1, exact halving for stride 2) -> InstanceNorm -> ReLU.
    ``stride``: one per spatial axis, or one for all."""
    ops = layers(spatial_dims)
    stride = stride if isinstance(stride, int) else tuple(stride)
    return nn.Sequential(
        ops.conv(channels, channels, kernel_size, stride=stride, padding=kernel_size // 2),
        ops.instance_norm(channels),
        nn.ReLU(inplace=True),
    )


def transposed_conv_in_relu(channels: int, kernel_size: int, stride: Stride, spatial_dims: int = 3) -> nn.Sequential:
    """ConvTranspose that multiplies each axis by its stride exactly -> InstanceNorm -> ReLU."""
    ops = layers(spatial_dims)
    return nn.Sequential(
        ops.conv_transpose(
            channels, channels, kernel_size, stride=tuple(stride), padding=kernel_size // 2,
            output_padding=tuple(s - 1 for s in stride),
        ),
        ops.instance_norm(channels),
        nn.ReLU(inplace=True),
    )


class MlpChannel(nn.Module):
    """Pointwise MLP: 1x1 conv C -> hidden, GELU, 1x1 conv hidden -> C (SegMamba names fc1/fc2)."""

    def __init__(self, hidden_size: int, mlp_dim: int, spatial_dims: int = 3):
        super().__init__()
        conv = layers(spatial_dims).conv
        self.fc1 = conv(hidden_size, mlp_dim, 1)
        self.act = nn.GELU()
        self.fc2 = conv(mlp_dim, hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ResidualBlock(nn.Module):
    """x + Conv3(ReLU(GN(Conv3(ReLU(GN(x)))))), MONAI SegResNet's ResBlock with GroupNorm(8)."""

    def __init__(self, channels: int, num_groups: int = 8, spatial_dims: int = 3):
        super().__init__()
        if channels % num_groups:
            raise ValueError(f"GroupNorm needs channels ({channels}) divisible by num_groups ({num_groups})")
        conv = layers(spatial_dims).conv
        self.body = nn.Sequential(
            nn.GroupNorm(num_groups, channels),
            nn.ReLU(inplace=True),
            conv(channels, channels, 3, padding=1, bias=False),
            nn.GroupNorm(num_groups, channels),
            nn.ReLU(inplace=True),
            conv(channels, channels, 3, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SkipProjection(nn.Sequential):
    """Encoder output -> InstanceNorm -> MLP(C, 2C), the skip path of SegMamba and SegResMamba."""

    def __init__(self, channels: int, spatial_dims: int = 3):
        super().__init__(layers(spatial_dims).instance_norm(channels), MlpChannel(channels, 2 * channels, spatial_dims))


class AdditiveUpBlock(nn.Module):
    """1x1 conv C_in -> C_out, non-trainable (tri/bi)linear upsampling, + skip, residual block.

    ``forward(x (B, C_in, d, h, w), skip (B, C_out, d*s0, h*s1, w*s2)) -> like skip``; in 2D
    without d.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: Stride, spatial_dims: int = 3):
        super().__init__()
        ops = layers(spatial_dims)
        self.reduce = ops.conv(in_channels, out_channels, 1, bias=False)
        self.upsample = nn.Upsample(scale_factor=tuple(float(s) for s in scale), mode=ops.interpolation,
                                    align_corners=False)
        self.refine = ResidualBlock(out_channels, spatial_dims=spatial_dims)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.refine(self.upsample(self.reduce(x)) + skip)


def padded_size(size: Sequence[int], divisor: Sequence[int]) -> list[int]:
    """The size a network pads each axis to: the next multiple of the axis's divisor (the
    product of its strides), and where the network pools the axis (divisor > 1) at least twice
    the divisor, so that its deepest feature map keeps 2 voxels (InstanceNorm needs more than
    one). The rule of the deepest map for padding and patch checks; the trainers round patches to
    at least two multiples by default too (``trainers.base.round_patch_in_plans``)."""
    return [max(math.ceil(s / d), 2 if d > 1 else 1) * d for s, d in zip(size, divisor)]


def pad_to_multiple(x: Tensor, divisor: Sequence[int]) -> Tensor:
    """Zero-pads the end of each spatial axis to its :func:`padded_size`."""
    extra = [p - s for p, s in zip(padded_size(x.shape[2:], divisor), x.shape[2:])]
    if not any(extra):
        return x
    return F.pad(x, [p for e in reversed(extra) for p in (0, e)])


def crop_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """The first ``size`` voxels of each spatial axis of x."""
    return x[(..., *(slice(0, s) for s in size))]


def checkpointed(function: Callable[..., T], *args, enabled: bool = True) -> T:
    """``function(*args)``, under activation checkpointing when ``enabled`` and autograd is
    recording (training): the forward pass keeps only ``args`` for the backward pass, which runs
    ``function`` again to get its activations back (``torch.utils.checkpoint``, non-reentrant,
    with the random state and autocast of the first run). The same outputs and gradients for less
    memory and one more forward of ``function``. Under ``torch.no_grad`` (validation, inference)
    or with ``enabled`` False, the plain call. The modules that ``function`` runs keep their names:
    the state_dict is the same either way."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)
