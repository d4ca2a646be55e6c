"""The paper's baselines as siblings of nnUNetTrainerSegResMamba, trained by the same pipeline.

Each is a small subclass of :class:`ComparisonTrainerBase`: its recipe is a set of class
attributes; its network and the patch rule of that network (``patch_divisor``) come from
:mod:`nnunetv2_segresmamba.registry`. The budget (epochs x iterations) is the base's, the
same for every sibling.
"""

from __future__ import annotations

from nnunetv2_segresmamba.registry import network
from nnunetv2_segresmamba.trainers.base import SMOKE_FEATURE_SIZES, ComparisonTrainerBase, network_of
from nnunetv2_segresmamba.trainers.graceful_stop import StopCheckSchedule
from nnunetv2_segresmamba.trainers.memory import GaLore, LowMemory
from nnunetv2_segresmamba.trainers.recipes import (
    NnUNetRecipe,
    PaperRecipe,
    QuickSmokeSchedule,
    SmokeSchedule,
    TwoEpochs,
)

SEGMAMBA, SWINUNETR, UNETR = network("SegMamba"), network("SwinUNETR"), network("UNETR")


class nnUNetTrainerSegMamba(NnUNetRecipe, ComparisonTrainerBase):
    """SegMamba (ge-xing/SegMamba) with its official recipe (``3_train.py``).

    - optimizer: SGD, lr 1e-2, momentum 0.99, nesterov, weight decay 3e-5
    - schedule: poly
    - loss: cross-entropy; no deep supervision
    - patch: rounded to multiples of 16 (stem and three stride-2 downsamplings)
    - configurations: 3D only (its port is a 3D network); ``2d`` is refused with advice
    """

    member = SEGMAMBA
    loss_name = "ce"
    patch_divisor = SEGMAMBA.patch_divisor
    supported_spatial_dims = SEGMAMBA.spatial_dims  # 3D only: refuses 2d with advice
    build_network = network_of(SEGMAMBA)


class nnUNetTrainerSwinUNETR(NnUNetRecipe, ComparisonTrainerBase):
    """MONAI SwinUNETR (feature_size 48) with the recipe of MONAI's BTCV tutorial; 2D or 3D as
    the configuration's patch (MONAI's ``spatial_dims``).

    - optimizer: AdamW, lr 1e-4, weight decay 1e-5
    - schedule: cosine annealing
    - loss: Dice + cross-entropy; no deep supervision
    - patch: rounded to multiples of 32 (five stride-2 stages)
    """

    member = SWINUNETR
    optimizer_name = "AdamW"
    recipe_initial_lr = 1e-4
    recipe_weight_decay = 1e-5
    lr_schedule = "cosine"
    patch_divisor = SWINUNETR.patch_divisor
    build_network = network_of(SWINUNETR)


class nnUNetTrainerUNETR(nnUNetTrainerSwinUNETR):
    """MONAI UNETR (ViT-B/16, ``img_size`` = the patch, 2D or 3D) with the same recipe as SwinUNETR
    (MONAI's BTCV tutorial): AdamW 1e-4, weight decay 1e-5, cosine, Dice + CE. Patch rounded to
    multiples of 16 (the ViT patch)."""

    member = UNETR
    patch_divisor = UNETR.patch_divisor
    build_network = network_of(UNETR)


class nnUNetTrainerComparisonNnUNet(NnUNetRecipe, ComparisonTrainerBase):
    """nnU-Net itself: the network from the plans (2D or 3D) and nnU-Net's recipe (SGD 1e-2, poly,
    Dice + CE, deep supervision), only the family's shared budget set by the base."""

    member = network("nnU-Net")  # on ResEnc plans: that preset's member (registry.on_plans)
    deep_supervision = True


class nnUNetTrainerComparisonNnUNet_paperRecipe(PaperRecipe, nnUNetTrainerComparisonNnUNet):
    """Ablation: nnU-Net's network (from the plans, without deep supervision) with the SegResMamba
    paper's recipe, AdamW 1e-4, cosine, Dice. With nnUNetTrainerSegResMamba_nnUNetRecipe it makes
    the 2 x 2 of network x recipe."""

    member = network("nnU-Net-paperRecipe")


class nnUNetTrainerSegMamba_2epochs(TwoEpochs, nnUNetTrainerSegMamba):
    pass


class nnUNetTrainerSegMamba_smoke(QuickSmokeSchedule, nnUNetTrainerSegMamba):
    network_widths = {"feature_sizes": SMOKE_FEATURE_SIZES, "hidden_size": 256}  # a third of the paper's


class nnUNetTrainerSegMamba_lowmem(LowMemory, nnUNetTrainerSegMamba):
    """SegMamba with activation checkpointing (``SegMamba(checkpointing=True)``, :class:`~.memory.LowMemory`):
    each encoder stage's downsampling and GSC and its skip, and each UNETR block, recomputed in the
    backward pass, and each ToM layer scanning one direction at a time; the output block is not
    checkpointed. The same network, weights and recipe."""


class nnUNetTrainerSegMamba_lowmem_smoke(QuickSmokeSchedule, nnUNetTrainerSegMamba_lowmem):
    network_widths = nnUNetTrainerSegMamba_smoke.network_widths


class nnUNetTrainerSwinUNETR_2epochs(TwoEpochs, nnUNetTrainerSwinUNETR):
    pass


class nnUNetTrainerSwinUNETR_smoke(QuickSmokeSchedule, nnUNetTrainerSwinUNETR):
    network_widths = {"feature_size": 12}  # a quarter of the paper's


class nnUNetTrainerSwinUNETR_lowmem(LowMemory, nnUNetTrainerSwinUNETR):
    """SwinUNETR with MONAI's ``use_checkpoint``: the attention and MLP halves of every Swin block
    recomputed in the backward pass (:class:`~.memory.LowMemory`); the same network, weights and recipe."""


class nnUNetTrainerSwinUNETR_lowmem_smoke(QuickSmokeSchedule, nnUNetTrainerSwinUNETR_lowmem):
    network_widths = nnUNetTrainerSwinUNETR_smoke.network_widths


class nnUNetTrainerSwinUNETR_GaLore(GaLore, nnUNetTrainerSwinUNETR):
    """SwinUNETR and its recipe with GaLore-AdamW in place of AdamW (:class:`~.memory.GaLore`)."""


class nnUNetTrainerSwinUNETR_lowmem_GaLore(GaLore, nnUNetTrainerSwinUNETR_lowmem):
    """SwinUNETR with both: MONAI's ``use_checkpoint`` and GaLore-AdamW."""


class nnUNetTrainerUNETR_2epochs(TwoEpochs, nnUNetTrainerUNETR):
    pass


class nnUNetTrainerUNETR_smoke(QuickSmokeSchedule, nnUNetTrainerUNETR):
    network_widths = {"hidden_size": 192, "mlp_dim": 768, "num_heads": 3}  # a quarter of ViT-B's


class nnUNetTrainerUNETR_GaLore(GaLore, nnUNetTrainerUNETR):
    """UNETR and its recipe with GaLore-AdamW in place of AdamW (:class:`~.memory.GaLore`): ViT-B's
    768-wide Linear weights are where it saves."""


class nnUNetTrainerComparisonNnUNet_2epochs(TwoEpochs, nnUNetTrainerComparisonNnUNet):
    pass


class nnUNetTrainerComparisonNnUNet_smoke(SmokeSchedule, nnUNetTrainerComparisonNnUNet):
    pass


class nnUNetTrainerComparisonNnUNet_stopcheck(StopCheckSchedule, nnUNetTrainerComparisonNnUNet):
    """For the graceful stop's tests: only a graceful stop writes checkpoint_latest.pth."""


class nnUNetTrainerComparisonNnUNet_paperRecipe_smoke(QuickSmokeSchedule, nnUNetTrainerComparisonNnUNet_paperRecipe):
    pass
