"""The comparison family: five trainers, the networks they build, and the paper's figures;
and the ablations of SegResMamba (its ToM, and the recipe swapped with nnU-Net's).

Benchmarks and cluster sweeps iterate over :data:`FAMILY` (by default over its "comparison"
group, the five of the paper: see :func:`members`); each entry builds its network for
(in_channels, out_channels, patch_size) without any plans file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch.nn as nn

Builder = Callable[[int, int, Sequence[int]], nn.Module]


def build_segresmamba(in_channels: int, out_channels: int, patch_size: Sequence[int]) -> nn.Module:
    from nnunetv2_segresmamba.networks.segresmamba import SegResMamba

    return SegResMamba.for_patch_size(in_channels, out_channels, patch_size)


def segresmamba_of(trainer: str) -> Builder:
    """A builder of the SegResMamba that ``trainer`` trains (its ToM directions), planned as
    :func:`build_segresmamba` plans it."""

    def build(in_channels: int, out_channels: int, patch_size: Sequence[int]) -> nn.Module:
        from nnunetv2_segresmamba import trainers
        from nnunetv2_segresmamba.networks.segresmamba import SegResMamba

        directions = getattr(trainers, trainer).tom_directions
        return SegResMamba.for_patch_size(in_channels, out_channels, patch_size, tom_directions=directions)

    return build


def build_segmamba(in_channels: int, out_channels: int, patch_size: Sequence[int]) -> nn.Module:
    from nnunetv2_segresmamba.networks.segmamba import SegMamba

    _require_divisible(patch_size, 16, "SegMamba")
    return SegMamba(in_channels, out_channels)


def build_swinunetr(in_channels: int, out_channels: int, patch_size: Sequence[int]) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    _require_divisible(patch_size, 32, "SwinUNETR")
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=48, spatial_dims=3)


def build_unetr(in_channels: int, out_channels: int, patch_size: Sequence[int]) -> nn.Module:
    from monai.networks.nets import UNETR

    _require_divisible(patch_size, 16, "UNETR")
    return UNETR(in_channels=in_channels, out_channels=out_channels, img_size=tuple(patch_size), feature_size=16,
                 hidden_size=768, mlp_dim=3072, num_heads=12, proj_type="perceptron", norm_name="instance",
                 res_block=True, dropout_rate=0.0)


def build_nnunet(in_channels: int, out_channels: int, patch_size: Sequence[int]) -> nn.Module:
    """nnU-Net's PlainConvUNet as planned for a 128^3 patch (6 stages, 32..320 features)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    _require_divisible(patch_size, 32, "nnU-Net (6 stages)")
    return PlainConvUNet(
        in_channels, 6, [32, 64, 128, 256, 320, 320], nn.Conv3d, 3, [1, 2, 2, 2, 2, 2], [2] * 6, out_channels,
        [2] * 5, conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False,
    )


COMPARISON, ABLATION = "comparison", "ablation"
SCHEDULE_SUFFIXES = ("_smoke", "_2epochs")  # shorter runs of a member's trainer


@dataclass(frozen=True)
class Member:
    trainer: str
    network: str  # a name of its own for each member, as benchmarks and reports key rows by it
    build: Builder
    paper_params_m: float | None  # Table 7, BTCV 1 -> 14 at 128^3; None for the ablations
    group: str = COMPARISON


FAMILY: tuple[Member, ...] = (
    Member("nnUNetTrainerSegResMamba", "SegResMamba", build_segresmamba, 119.98),
    Member("nnUNetTrainerSegMamba", "SegMamba", build_segmamba, 67.36),
    Member("nnUNetTrainerSwinUNETR", "SwinUNETR", build_swinunetr, 62.19),
    Member("nnUNetTrainerUNETR", "UNETR", build_unetr, 93.01),
    Member("nnUNetTrainerComparisonNnUNet", "nnU-Net", build_nnunet, 31.19),
    Member("nnUNetTrainerSegResMambaNoToM", "SegResMamba-NoToM",
           segresmamba_of("nnUNetTrainerSegResMambaNoToM"), None, ABLATION),
    Member("nnUNetTrainerSegResMambaForwardToM", "SegResMamba-ForwardToM",
           segresmamba_of("nnUNetTrainerSegResMambaForwardToM"), None, ABLATION),
    Member("nnUNetTrainerSegResMambaForwardReverseToM", "SegResMamba-ForwardReverseToM",
           segresmamba_of("nnUNetTrainerSegResMambaForwardReverseToM"), None, ABLATION),
    Member("nnUNetTrainerSegResMamba_nnUNetRecipe", "SegResMamba-nnUNetRecipe", build_segresmamba, None, ABLATION),
    Member("nnUNetTrainerComparisonNnUNet_paperRecipe", "nnU-Net-paperRecipe", build_nnunet, None, ABLATION),
)


def members(group: str | None = COMPARISON) -> list[Member]:
    """The members of ``group`` ("comparison": the paper's five, the default of sweeps and
    benchmarks; "ablation"), or all of :data:`FAMILY` for None."""
    if group not in (COMPARISON, ABLATION, None):
        raise ValueError(f"group must be {COMPARISON!r}, {ABLATION!r} or None (all), got {group!r}")
    return [m for m in FAMILY if group is None or m.group == group]


def member(trainer: str) -> Member:
    """The family member whose trainer is ``trainer`` (a ``_smoke``/``_2epochs`` suffix is allowed)."""
    base = next((trainer[: -len(s)] for s in SCHEDULE_SUFFIXES if trainer.endswith(s)), trainer)
    for m in FAMILY:
        if m.trainer == base:
            return m
    raise KeyError(f"{trainer!r} is not in the comparison family: {[m.trainer for m in FAMILY]}")


def _require_divisible(patch_size: Sequence[int], divisor: int, network: str) -> None:
    if len(patch_size) != 3 or any(s % divisor for s in patch_size):
        raise ValueError(
            f"{network} needs a 3D patch divisible by {divisor} on every axis, got {list(patch_size)}. "
            f"Its nnU-Net trainer rounds the planned patch for you; when building by hand, round it first."
        )
