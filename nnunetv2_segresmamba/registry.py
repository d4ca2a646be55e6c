"""The comparison family: each member's trainer and nnU-Net plans, the network it builds, the
patch sizes that network takes and the published figures for it. Three groups: the paper's
five ("comparison"), the baselines the field compares against now ("baseline": nnU-Net's ResEnc
presets and U-Mamba), and the ablations (SegResMamba's ToM, the recipes swapped, U-Mamba
without its Mamba layer).

Benchmarks and cluster sweeps iterate over :data:`FAMILY` (by default over its "comparison"
group: see :func:`members`); each entry builds its network for (in_channels, out_channels,
patch_size) without any plans file. Look a member up by network name (:func:`network`); a
trainer class names its member (``ComparisonTrainerBase.member``), and :func:`on_plans` finds
it on other plans.

Import-light: torch and the networks are imported by the builders only, so that reports can
name networks without loading torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nnunetv2_segresmamba.networks.planning import SWIN_UMAMBA_DIVISOR
from nnunetv2_segresmamba.operators.directions import DIRECTIONS, FORWARD, REVERSE

if TYPE_CHECKING:
    import torch.nn as nn

FORWARD_SUFFIX, REVERSE_SUFFIX = DIRECTIONS[FORWARD], DIRECTIONS[REVERSE]
Builder = Callable[..., "nn.Module"]  # (in_channels, out_channels, patch_size, **width overrides) -> network


def takes_checkpointing(builder: Callable) -> bool:
    """Whether ``builder`` (a registry builder, or a trainer's ``build_network`` marked by
    :func:`checkpointing_builder`) builds its network with activation checkpointing when asked:
    a builder declares it by a ``checkpointing`` parameter, a trainer's ``build_network`` by the mark."""
    return getattr(builder, "takes_checkpointing", None) or "checkpointing" in inspect.signature(builder).parameters


def checkpointing_builder(build_network: Callable) -> Callable:
    """Marks a trainer's ``build_network`` (nnU-Net's signature, so no ``checkpointing`` parameter)
    as one that builds with ``checkpointing=cls.activation_checkpointing`` (:func:`takes_checkpointing`)."""
    build_network.takes_checkpointing = True
    return build_network


def segresmamba_with(tom_directions: Sequence[str] = DIRECTIONS) -> Builder:
    """A builder of SegResMamba with the ToM scanning ``tom_directions`` (empty: no ToM), its
    strides planned for the patch (:meth:`SegResMamba.for_patch_size`); ``checkpointing``:
    activation checkpointing while training; ``feature_sizes``: its 4 stage widths (the paper's
    by default), for smaller smoke runs."""

    def build(in_channels: int, out_channels: int, patch_size: Sequence[int], checkpointing: bool = False,
              **widths) -> nn.Module:
        from nnunetv2_segresmamba.networks.segresmamba import SegResMamba

        return SegResMamba.for_patch_size(in_channels, out_channels, patch_size, tom_directions=tom_directions,
                                          checkpointing=checkpointing, **widths)

    return build


def build_segmamba(in_channels: int, out_channels: int, patch_size: Sequence[int], checkpointing: bool = False,
                   **widths) -> nn.Module:
    """SegMamba as published (``widths``: SegMamba's ``feature_sizes``, ``hidden_size``, for
    smaller smoke runs); its patch must be a multiple of 16 (stem and three stride-2
    downsamplings), checked by :meth:`Member.build`. ``checkpointing``: activation checkpointing
    while training."""
    from nnunetv2_segresmamba.networks.segmamba import SegMamba

    return SegMamba(in_channels, out_channels, checkpointing=checkpointing, **widths)


def build_swinunetr(in_channels: int, out_channels: int, patch_size: Sequence[int],
                    feature_size: int = 48, checkpointing: bool = False) -> nn.Module:
    """MONAI's SwinUNETR, feature size 48 (the paper's), 2D or 3D as the patch; its patch must
    be a multiple of 32 (five stride-2 stages), checked by :meth:`Member.build`. ``checkpointing``:
    MONAI's ``use_checkpoint`` (each Swin block's attention and MLP halves checkpointed)."""
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size,
                     spatial_dims=len(patch_size), use_checkpoint=checkpointing)


def build_unetr(in_channels: int, out_channels: int, patch_size: Sequence[int], hidden_size: int = 768,
                mlp_dim: int = 3072, num_heads: int = 12) -> nn.Module:
    """MONAI's UNETR (ViT-B/16 by default, ``img_size`` = the patch), 2D or 3D as the patch; its
    patch must be a multiple of 16 (the ViT patch), checked by :meth:`Member.build`."""
    from monai.networks.nets import UNETR

    return UNETR(in_channels=in_channels, out_channels=out_channels, img_size=tuple(patch_size), feature_size=16,
                 hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads, proj_type="perceptron",
                 norm_name="instance", res_block=True, dropout_rate=0.0, spatial_dims=len(patch_size))


def umamba_plan(patch_size: Sequence[int]) -> dict:
    """U-Mamba's arguments for ``patch_size`` (2D or 3D) at 1 mm: the U-Net nnU-Net's default
    planner gives it (:func:`~nnunetv2_segresmamba.networks.planning.plan_topology`), 2 blocks per
    stage as its plans. Every axis of the patch must be a multiple of the planned strides' product
    (a ValueError names the patch to use)."""
    from nnunetv2_segresmamba.networks.planning import plan_topology

    topology = plan_topology(patch_size)
    topology.require_patch(patch_size, "U-Mamba")
    n = len(topology.strides)
    return {"features_per_stage": topology.features_per_stage, "kernel_sizes": topology.kernel_sizes,
            "strides": topology.strides, "n_blocks_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1)}


def build_umamba_bot(in_channels: int, out_channels: int, patch_size: Sequence[int], mamba: bool = True,
                     checkpointing: bool = False) -> nn.Module:
    """U-Mamba Bot (``mamba=False``: the No-Mamba control) on :func:`umamba_plan`, He-initialised
    as the official builders do; ``checkpointing``: activation checkpointing while training."""
    from nnunetv2_segresmamba.networks.umamba import UMambaBot

    return UMambaBot(in_channels, out_channels, **umamba_plan(patch_size), mamba=mamba,
                     checkpointing=checkpointing).initialize()


def build_umamba_enc(in_channels: int, out_channels: int, patch_size: Sequence[int], checkpointing: bool = False
                     ) -> nn.Module:
    """U-Mamba Enc on :func:`umamba_plan`, for inputs of ``patch_size``, He-initialised;
    ``checkpointing``: activation checkpointing while training."""
    from nnunetv2_segresmamba.networks.umamba import UMambaEnc

    return UMambaEnc(in_channels, out_channels, patch_size, **umamba_plan(patch_size),
                     checkpointing=checkpointing).initialize()


def build_umamba_no_mamba(in_channels: int, out_channels: int, patch_size: Sequence[int],
                          checkpointing: bool = False) -> nn.Module:
    """U-Mamba Bot with its Mamba layer replaced by identity (:func:`build_umamba_bot`)."""
    return build_umamba_bot(in_channels, out_channels, patch_size, mamba=False, checkpointing=checkpointing)


def build_swin_umamba(in_channels: int, out_channels: int, patch_size: Sequence[int]) -> nn.Module:
    """Swin-UMamba (2D; its patch a multiple of 32, checked by :meth:`Member.build`), without its
    ImageNet weights: the trainer loads them when training starts."""
    from nnunetv2_segresmamba.networks.swin_umamba import SwinUMamba

    return SwinUMamba(in_channels, out_channels)


def build_swin_umamba_d(in_channels: int, out_channels: int, patch_size: Sequence[int]) -> nn.Module:
    """Swin-UMamba-dagger (2D; its patch a multiple of 32), without its ImageNet weights."""
    from nnunetv2_segresmamba.networks.swin_umamba import SwinUMambaD

    return SwinUMambaD(in_channels, out_channels)


RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)  # nnU-Net's ResEnc planners' encoder


def build_resenc(in_channels: int, out_channels: int, patch_size: Sequence[int]) -> nn.Module:
    """nnU-Net's ResidualEncoderUNet as its ResEnc planners build it for ``patch_size`` at 1 mm
    (1, 3, 4, 6, 6, 6... blocks per encoder stage, one per decoder stage). The M, L and XL presets
    build this same network for a given patch: they differ in the patch and batch they plan
    for their memory targets. The trainer reads the plans instead. Every axis of the patch must be
    a multiple of the planned strides' product."""
    import torch.nn as nn
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    from nnunetv2_segresmamba.networks.blocks import layers
    from nnunetv2_segresmamba.networks.planning import NNUNET_NORM_KWARGS, plan_topology

    topology, ops = plan_topology(patch_size), layers(len(patch_size))
    topology.require_patch(patch_size, "nnU-Net ResEnc")
    n = len(topology.strides)
    return ResidualEncoderUNet(
        in_channels, n, topology.features_per_stage, ops.conv, topology.kernel_sizes, topology.strides,
        list(RESENC_BLOCKS_PER_STAGE[:n]), out_channels, [1] * (n - 1), conv_bias=True,
        norm_op=ops.instance_norm, norm_op_kwargs=NNUNET_NORM_KWARGS, nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True}, deep_supervision=False,
    )


def build_nnunet(in_channels: int, out_channels: int, patch_size: Sequence[int]) -> nn.Module:
    """nnU-Net's PlainConvUNet as planned for a 128^3 patch (6 stages, 32..320 features), in 2D
    with 2D convs for a 2D patch; its patch must be a multiple of 32 (five stride-2 stages),
    checked by :meth:`Member.build`. The nnU-Net trainers plan their own network and do not use
    this builder."""
    import torch.nn as nn
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnunetv2_segresmamba.networks.blocks import layers
    from nnunetv2_segresmamba.networks.planning import NNUNET_NORM_KWARGS

    ops = layers(len(patch_size))
    return PlainConvUNet(
        in_channels, 6, [32, 64, 128, 256, 320, 320], ops.conv, 3, [1, 2, 2, 2, 2, 2], [2] * 6, out_channels,
        [2] * 5, conv_bias=True, norm_op=ops.instance_norm, norm_op_kwargs=NNUNET_NORM_KWARGS,
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False,
    )


COMPARISON, BASELINE, ABLATION = "comparison", "baseline", "ablation"
GROUPS = (COMPARISON, BASELINE, ABLATION)
DEFAULT_PLANS = "nnUNetPlans"  # nnU-Net's default planner's plans identifier
PLANS_SEPARATOR = ":"  # sweep -tr TRAINER:PLANS
BOTH, ONLY_3D, ONLY_2D = (2, 3), (3,), (2,)  # the spatial dims of the configurations a member trains
# Output layers, as state-dict key prefixes (see Member.output_layers): nnU-Net's convention (its
# U-Nets' decoders, U-Mamba's, Swin-UMamba-dagger's), SegResMamba's head, MONAI's UnetOutBlock
# (SwinUNETR, UNETR, SegMamba), Swin-UMamba's deep-supervision heads
SEG_LAYERS, SEGRESMAMBA_HEAD, MONAI_OUT, SWIN_UMAMBA_OUT = (
    ("decoder.seg_layers.",), ("head.seg_layers.",), ("out.",), ("out_layers.",))


def trainer_label(trainer: str, plans: str) -> str:
    """``TRAINER``, or ``TRAINER:PLANS`` where the plans are not nnU-Net's default (as ``sweep -tr`` takes it)."""
    return trainer if plans == DEFAULT_PLANS else f"{trainer}{PLANS_SEPARATOR}{plans}"


@dataclass(frozen=True)
class PaperFigures:
    """The SegResMamba paper's (MIDL 2025) efficiency figures for one network, on an A100 40 GB,
    BTCV 1 -> 14 channels at 128^3; None where the paper gives none."""

    params_m: float | None = None  # Table 7: parameters (millions)
    fvcore_macs_g: float | None = None  # Table 7: fvcore "FLOPs", which count multiply-accumulates (G)
    train_memory_gb: float | None = None  # Table 8: training memory (GB) at batch 1
    inference_s: float | None = None  # Table 1: inference time per patch (s)


REVISITED_SOURCE = ("nnU-Net Revisited (Isensee et al., MICCAI 2024, arXiv:2404.09556), Table 2, as in nnU-Net's "
                    "documentation/resenc_presets.md")
REVISITED_DATASETS = ("BTCV", "ACDC", "LiTS", "BraTS", "KiTS", "AMOS")


@dataclass(frozen=True)
class RevisitedFigures:
    """A row of nnU-Net Revisited's table (:data:`REVISITED_SOURCE`): Dice (%) of 5-fold
    cross-validation per dataset of :data:`REVISITED_DATASETS`, every network trained from
    scratch in the nnU-Net pipeline; the GPU memory of training (GB, nvidia-smi) and its run
    time (hours) on one A100 PCIe 40GB."""

    row: str  # the row's name in the table
    dice: tuple[float, float, float, float, float, float]  # in REVISITED_DATASETS order
    vram_gb: float
    run_time_h: float
    source: str = REVISITED_SOURCE

    def dice_on(self, dataset: str) -> float:
        """The Dice (%) on ``dataset``, one of :data:`REVISITED_DATASETS`."""
        return self.dice[REVISITED_DATASETS.index(dataset)]


@dataclass(frozen=True)
class Member:
    """One trainer of the family, the network it builds and what is known about that network."""

    trainer: str
    network: str  # a name of its own for each member, as benchmarks and reports key rows by it
    builder: Builder  # (in_channels, out_channels, patch_size) -> network, unchecked; see build
    patch_divisor: int | None = None  # every axis of the patch a multiple of this; None: any patch
    paper: PaperFigures | None = None  # the SegResMamba paper's figures; None where it has none
    group: str = COMPARISON
    spatial_dims: tuple[int, ...] = BOTH  # (2, 3): nnU-Net's 2d and 3D configurations; (3,): 3D only
    tom_directions: tuple[str, ...] | None = None  # a SegResMamba's ToM scans (operators.directions); else None
    plans: str = DEFAULT_PLANS  # the nnU-Net plans identifier it trains with (nnUNetv2_train -p)
    revisited: RevisitedFigures | None = None  # its row in nnU-Net Revisited's table, if any
    ablates: str | None = None  # an ablation: the network of the member it changes (its control pair)
    # The state-dict key prefixes of the network's output layers, every deep-supervision head
    # included: the tensors whose shapes depend on the number of classes. A pretrained load
    # (nnUNetv2_train -pretrained_weights, trainers.fine_tuning) leaves them out. The official
    # names are kept, so that official checkpoints load strictly.
    output_layers: tuple[str, ...] = SEG_LAYERS

    def build(self, in_channels: int, out_channels: int, patch_size: Sequence[int], **widths) -> nn.Module:
        """The network for ``patch_size`` (2D or 3D as it has 2 or 3 axes), at the builder's
        default widths unless ``widths`` overrides them (and ``checkpointing=True`` for the
        builders that take it: :func:`takes_checkpointing`, :func:`checkpointing_members`); ValueError
        when the patch breaks :attr:`spatial_dims` or :attr:`patch_divisor`."""
        self.require_patch(patch_size)
        return self.builder(in_channels, out_channels, patch_size, **widths)

    def require_patch(self, patch_size: Sequence[int]) -> None:
        """ValueError unless the network takes ``patch_size``: :attr:`spatial_dims` axes, each a
        multiple of :attr:`patch_divisor`."""
        require_spatial_dims(patch_size, self.spatial_dims, self.network)
        require_divisible(patch_size, self.patch_divisor, self.network)


def segresmamba_member(trainer: str, network: str, tom_directions: Sequence[str] = DIRECTIONS,
                       paper: PaperFigures | None = None, group: str = ABLATION) -> Member:
    """A member that trains SegResMamba with the ToM scanning ``tom_directions`` (an ablation of
    SegResMamba unless ``group`` says otherwise)."""
    directions = tuple(tom_directions)
    return Member(trainer, network, segresmamba_with(directions), None, paper, group, tom_directions=directions,
                  ablates="SegResMamba" if group == ABLATION else None, output_layers=SEGRESMAMBA_HEAD)


NNUNET_TRAINER = "nnUNetTrainerComparisonNnUNet"
RESENC_PRESETS = ("M", "L", "XL")  # nnU-Net's ResEnc presets


def resenc_planner(preset: str) -> str:
    """nnU-Net's planner of a ResEnc preset (``nnUNetv2_plan_experiment -pl``)."""
    return f"nnUNetPlannerResEnc{preset}"


def resenc_plans(preset: str) -> str:
    """The plans identifier that :func:`resenc_planner` writes (``nnUNetv2_train -p``)."""
    return f"nnUNetResEncUNet{preset}Plans"


def resenc_member(preset: str, figures: RevisitedFigures) -> Member:
    """nnU-Net's trainer on the plans of a ResEnc preset ("M", "L", "XL")."""
    return Member(NNUNET_TRAINER, f"nnU-Net ResEnc {preset}", build_resenc, group=BASELINE,
                  plans=resenc_plans(preset), revisited=figures)


FAMILY: tuple[Member, ...] = (
    segresmamba_member("nnUNetTrainerSegResMamba", "SegResMamba", group=COMPARISON, paper=PaperFigures(
        params_m=119.98, fvcore_macs_g=188.42, train_memory_gb=5.10, inference_s=0.0841)),
    Member("nnUNetTrainerSegMamba", "SegMamba", build_segmamba, 16,
           PaperFigures(params_m=67.36, fvcore_macs_g=1443.96, train_memory_gb=13.51, inference_s=0.1693),
           spatial_dims=ONLY_3D, output_layers=MONAI_OUT),
    Member("nnUNetTrainerSwinUNETR", "SwinUNETR", build_swinunetr, 32,
           PaperFigures(params_m=62.19, fvcore_macs_g=767.23, train_memory_gb=7.77, inference_s=0.1343),
           revisited=RevisitedFigures("SwinUNETR", (78.89, 91.29, 76.50, 90.68, 81.27, 83.81), 13.10, 15),
           output_layers=MONAI_OUT),
    Member("nnUNetTrainerUNETR", "UNETR", build_unetr, 16,
           PaperFigures(params_m=93.01, fvcore_macs_g=177.44, train_memory_gb=3.08, inference_s=0.0531),
           output_layers=MONAI_OUT),
    Member(NNUNET_TRAINER, "nnU-Net", build_nnunet, 32,
           PaperFigures(params_m=31.19, fvcore_macs_g=480.06, inference_s=0.1668),  # no Table 8 figure
           revisited=RevisitedFigures("nnU-Net (org.)", (83.08, 91.54, 80.09, 91.24, 86.04, 88.64), 7.70, 9)),
    resenc_member("M", RevisitedFigures("nnU-Net ResEnc M", (83.31, 91.99, 80.75, 91.26, 86.79, 88.77), 9.10, 12)),
    resenc_member("L", RevisitedFigures("nnU-Net ResEnc L", (83.35, 91.69, 81.60, 91.13, 88.17, 89.41), 22.70, 35)),
    resenc_member("XL", RevisitedFigures("nnU-Net ResEnc XL", (83.28, 91.48, 81.19, 91.18, 88.67, 89.68), 36.60, 66)),
    Member("nnUNetTrainerUMambaBot", "U-Mamba Bot", build_umamba_bot, group=BASELINE,
           revisited=RevisitedFigures("U-Mamba Bot", (83.51, 91.79, 80.40, 91.26, 86.22, 89.13), 12.40, 24)),
    Member("nnUNetTrainerUMambaEnc", "U-Mamba Enc", build_umamba_enc, group=BASELINE,
           revisited=RevisitedFigures("U-Mamba Enc", (82.41, 91.22, 80.27, 90.91, 86.34, 88.38), 24.90, 47)),
    Member("nnUNetTrainerSwinUMamba", "Swin-UMamba", build_swin_umamba, SWIN_UMAMBA_DIVISOR, group=BASELINE,
           spatial_dims=ONLY_2D, output_layers=SWIN_UMAMBA_OUT),
    Member("nnUNetTrainerSwinUMambaD", "Swin-UMamba-dagger", build_swin_umamba_d, SWIN_UMAMBA_DIVISOR,
           group=BASELINE, spatial_dims=ONLY_2D),
    segresmamba_member("nnUNetTrainerSegResMambaNoToM", "SegResMamba-NoToM", ()),
    segresmamba_member("nnUNetTrainerSegResMambaForwardToM", "SegResMamba-ForwardToM", (FORWARD_SUFFIX,)),
    segresmamba_member("nnUNetTrainerSegResMambaForwardReverseToM", "SegResMamba-ForwardReverseToM",
                       (FORWARD_SUFFIX, REVERSE_SUFFIX)),
    segresmamba_member("nnUNetTrainerSegResMamba_nnUNetRecipe", "SegResMamba-nnUNetRecipe"),
    Member("nnUNetTrainerComparisonNnUNet_paperRecipe", "nnU-Net-paperRecipe", build_nnunet, 32, group=ABLATION,
           ablates="nnU-Net"),
    Member("nnUNetTrainerUMambaBotNoMamba", "U-Mamba Bot-NoMamba", build_umamba_no_mamba, group=ABLATION,
           revisited=RevisitedFigures("No-Mamba Base", (83.69, 91.89, 80.57, 91.26, 85.98, 89.04), 12.0, 24),
           ablates="U-Mamba Bot"),
    Member("nnUNetTrainerSwinUMambaScratch", "Swin-UMamba-Scratch", build_swin_umamba, SWIN_UMAMBA_DIVISOR,
           group=ABLATION, spatial_dims=ONLY_2D, output_layers=SWIN_UMAMBA_OUT, ablates="Swin-UMamba"),
    Member("nnUNetTrainerSwinUMambaDScratch", "Swin-UMamba-dagger-Scratch", build_swin_umamba_d,
           SWIN_UMAMBA_DIVISOR, group=ABLATION, spatial_dims=ONLY_2D, ablates="Swin-UMamba-dagger"),
)


def members(group: str | None = COMPARISON) -> list[Member]:
    """The members of ``group`` ("comparison": the paper's five, the default of sweeps and
    benchmarks; "baseline"; "ablation"), or all of :data:`FAMILY` for None."""
    if group not in (*GROUPS, None):
        raise ValueError(f"group must be one of {GROUPS} or None (all), got {group!r}")
    return [m for m in FAMILY if group is None or m.group == group]


def on_plans(member: Member, plans: str) -> Member:
    """The member that trains ``member``'s trainer on ``plans`` (nnU-Net's trainer on ResEnc M
    plans: "nnU-Net ResEnc M"); ``member`` itself where no member names those plans (a
    SegResMamba on ResEnc plans builds SegResMamba). Each trainer class names its member
    (``ComparisonTrainerBase.member``): the registry reads no trainer names."""
    return next((m for m in FAMILY if m.trainer == member.trainer and m.plans == plans), member)



def checkpointing_members() -> list[Member]:
    """The members whose network can checkpoint its activations (:func:`takes_checkpointing`):
    those with ``_lowmem`` trainers (:class:`~nnunetv2_segresmamba.trainers.memory.LowMemory`)."""
    return [m for m in FAMILY if takes_checkpointing(m.builder)]

def network(name: str) -> Member:
    """The family member whose network is called ``name`` (e.g. "SwinUNETR")."""
    for m in FAMILY:
        if m.network == name:
            return m
    raise KeyError(f"no network {name!r} in the comparison family; the networks are {[m.network for m in FAMILY]}")


def require_spatial_dims(patch_size: Sequence[int], spatial_dims: Sequence[int], name: str) -> None:
    """ValueError unless ``patch_size`` has one of ``spatial_dims`` axes."""
    if len(patch_size) not in spatial_dims:
        kinds = " or ".join(f"{d}D" for d in spatial_dims)
        raise ValueError(f"{name} takes {kinds} patches, got the {len(patch_size)}D patch {list(patch_size)}.")


def require_divisible(patch_size: Sequence[int], divisor: int | None, name: str) -> None:
    """ValueError unless every axis of ``patch_size`` is a multiple of ``divisor`` (None: no rule)."""
    if divisor is None:
        return
    if any(s % divisor for s in patch_size):
        raise ValueError(
            f"{name} needs a patch divisible by {divisor} on every axis, got {list(patch_size)}. "
            f"Its nnU-Net trainer rounds the planned patch for you; when building by hand, round it first."
        )
