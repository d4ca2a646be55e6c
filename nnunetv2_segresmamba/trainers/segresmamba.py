"""nnU-Net trainers for SegResMamba: the paper's network and recipe, and its ablations."""

from __future__ import annotations

import torch.nn as nn
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_segresmamba.networks.segresmamba import SegResMamba, arch_kwargs_for_plan
from nnunetv2_segresmamba.registry import checkpointing_builder, network
from nnunetv2_segresmamba.trainers.base import SMOKE_FEATURE_SIZES, ComparisonTrainerBase
from nnunetv2_segresmamba.trainers.memory import GaLore, LowMemory
from nnunetv2_segresmamba.trainers.recipes import (
    NnUNetRecipe,
    PaperRecipe,
    QuickSmokeSchedule,
    SmokeSchedule,
    TwoEpochs,
)


class nnUNetTrainerSegResMamba(PaperRecipe, ComparisonTrainerBase):
    """SegResMamba in the nnU-Net pipeline, with the paper's recipe (appendix A).

    - optimizer: AdamW, lr 1e-4, weight decay 1e-5 (none on the ToM's A_log and D)
    - schedule: cosine annealing over the run, stepped per epoch
    - loss: soft Dice (foreground classes; all regions for region-based datasets)
    - deep supervision: none (one full-resolution output)
    - budget: the comparison family's, nnU-Net's 1000 epochs x 250 iterations. The paper
      trained BTCV for 25,000 steps (100 such epochs); nnU-Net's own patch size, batch
      size, augmentation and sliding-window inference are used unchanged.
    - network: 2D or 3D as the configuration's patch (``2d``: the 2D SegResMamba; ``3d_fullres``,
      ``3d_lowres``, ``3d_cascade_fullres``: the paper's 3D network, in the cascade with the
      previous stage's one-hot segmentation as extra input channels, as nnU-Net gives them),
      built from the plan's ``pool_op_kernel_sizes`` and patch alone
      (:func:`nnunetv2_segresmamba.networks.segresmamba.arch_kwargs_for_plan`), so that the
      preprocessed plans, the run's plans.json and every checkpoint (its ``architecture``
      entry) give the same network.
    - activation checkpointing: off (on in the ``_lowmem`` variants, :class:`~.memory.LowMemory`).
    - torch.compile: off.
    """

    member = network("SegResMamba")
    tom_directions: tuple[str, ...] = member.tom_directions  # (): every ToM replaced by identity

    @classmethod
    @checkpointing_builder
    def build_network(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                      num_input_channels: int, num_output_channels: int,
                      enable_deep_supervision: bool = True) -> nn.Module:
        """The SegResMamba of the configuration's pools and patch, checkpointing its activations
        when the trainer says so (``activation_checkpointing``). No deep supervision: the flag
        is ignored."""
        kwargs = arch_kwargs_for_plan(configuration_manager.pool_op_kernel_sizes, configuration_manager.patch_size,
                                      cls.tom_directions, **cls.network_widths)
        return SegResMamba(num_input_channels, num_output_channels, **kwargs,
                           checkpointing=cls.activation_checkpointing)


class SmallWidths:
    """Mixin: SegResMamba at a third of the paper's widths, for the smoke and pipeline runs,
    which check the pipeline and that it learns, not the network's capacity."""

    network_widths = {"feature_sizes": SMOKE_FEATURE_SIZES}


class SmallQuickSmoke(SmallWidths, QuickSmokeSchedule):
    """Mixin: the :class:`SmallWidths` network for 1 epoch x 2 iterations, the cheapest run that
    trains, validates, saves and predicts through the CLI."""


class nnUNetTrainerSegResMamba_2epochs(TwoEpochs, nnUNetTrainerSegResMamba):
    pass


class nnUNetTrainerSegResMamba_smoke(SmallWidths, SmokeSchedule, nnUNetTrainerSegResMamba):
    """A short CPU run that still learns: the :class:`SmallWidths` network, 3 epochs x 12
    iterations, 2 validation iterations, lr 1e-3 and Dice + cross-entropy, so that so few AdamW
    steps learn the synthetic dataset every time (with Dice alone, small structures sometimes
    never got started). Used by the tests."""

    comparison_num_epochs = 3
    comparison_iterations_per_epoch = 12
    comparison_val_iterations_per_epoch = 2
    recipe_initial_lr = 1e-3
    loss_name = "dice_ce"


class nnUNetTrainerSegResMamba_pipeline(SmallQuickSmoke, nnUNetTrainerSegResMamba):
    """1 epoch x 2 iterations, the cheapest run that trains, validates, saves and predicts through
    the CLI: for checks of nnU-Net's pipeline around a network that the ``_smoke`` runs already
    train (the cascade's two stages in the end-to-end tests)."""


class nnUNetTrainerSegResMamba_demo(nnUNetTrainerSegResMamba_smoke):
    """The demo's run: the paper's network with the smoke recipe, seeded, for 5 epochs x 24
    iterations, enough to learn the synthetic dataset on a CPU (its mean Dice on the held-out
    cases and its run time: ``benchmarks/results/cpu-2core/memory_modes/demo_dice.md``)."""

    network_widths = {}  # the paper's
    comparison_num_epochs = 5
    comparison_iterations_per_epoch = 24


class nnUNetTrainerSegResMamba_lowmem(LowMemory, nnUNetTrainerSegResMamba):
    """The paper's network and recipe with activation checkpointing (:class:`~.memory.LowMemory`):
    the encoder's convolutions, its ToMs direction by direction, and the decoder blocks run again
    in the backward pass instead of keeping their activations. The same network and weights as
    :class:`nnUNetTrainerSegResMamba`."""


class nnUNetTrainerSegResMamba_lowmem_smoke(SmallQuickSmoke, nnUNetTrainerSegResMamba_lowmem):
    """The cheapest CLI run (1 epoch x 2 iterations, :class:`SmallWidths`) with checkpointing."""


class nnUNetTrainerSegResMamba_GaLore(GaLore, nnUNetTrainerSegResMamba):
    """The paper's network and recipe with GaLore-AdamW (:class:`~.memory.GaLore`) in place of AdamW:
    a smaller optimizer state. The same network and weights as :class:`nnUNetTrainerSegResMamba`."""


class nnUNetTrainerSegResMamba_lowmem_GaLore(GaLore, nnUNetTrainerSegResMamba_lowmem):
    """Both: activation checkpointing and GaLore-AdamW."""


class nnUNetTrainerSegResMamba_lowmem_GaLore_smoke(SmallQuickSmoke, nnUNetTrainerSegResMamba_lowmem_GaLore):
    """The cheapest CLI run of both, 1 epoch x 2 iterations at small widths."""


class nnUNetTrainerSegResMamba_lowmem_demo(LowMemory, nnUNetTrainerSegResMamba_demo):
    """The demo's run with activation checkpointing, for its Dice beside the demo's
    (``benchmarks/results/cpu-2core/memory_modes``)."""


class nnUNetTrainerSegResMamba_GaLore_demo(GaLore, nnUNetTrainerSegResMamba_demo):
    """The demo's run with GaLore-AdamW, for its Dice beside the demo's AdamW."""


class nnUNetTrainerSegResMamba_lowmem_GaLore_demo(GaLore, nnUNetTrainerSegResMamba_lowmem_demo):
    """The demo's run with both."""


class nnUNetTrainerSegResMambaNoToM(nnUNetTrainerSegResMamba):
    """Ablation: every ToM (MambaLayer) replaced by identity, everything else the same; the
    control that nnU-Net Revisited ran for U-Mamba ("No-Mamba Base")."""

    member = network("SegResMamba-NoToM")
    tom_directions = member.tom_directions


class nnUNetTrainerSegResMambaForwardToM(nnUNetTrainerSegResMamba):
    """Ablation: the ToM scans forward only (no reverse, no inter-slice scan)."""

    member = network("SegResMamba-ForwardToM")
    tom_directions = member.tom_directions


class nnUNetTrainerSegResMambaForwardReverseToM(nnUNetTrainerSegResMamba):
    """Ablation: the ToM scans forward and reverse, without the inter-slice scan."""

    member = network("SegResMamba-ForwardReverseToM")
    tom_directions = member.tom_directions


class nnUNetTrainerSegResMamba_nnUNetRecipe(NnUNetRecipe, nnUNetTrainerSegResMamba):
    """Ablation: SegResMamba with nnU-Net's recipe (SGD 1e-2 nesterov, poly, Dice + CE), the
    recipe of the family's nnU-Net sibling; SegResMamba has no deep supervision."""

    member = network("SegResMamba-nnUNetRecipe")


class nnUNetTrainerSegResMambaNoToM_smoke(SmallQuickSmoke, nnUNetTrainerSegResMambaNoToM):
    pass


class nnUNetTrainerSegResMambaForwardToM_smoke(SmallQuickSmoke, nnUNetTrainerSegResMambaForwardToM):
    pass


class nnUNetTrainerSegResMambaForwardReverseToM_smoke(SmallQuickSmoke, nnUNetTrainerSegResMambaForwardReverseToM):
    pass


class nnUNetTrainerSegResMamba_nnUNetRecipe_smoke(SmallQuickSmoke, nnUNetTrainerSegResMamba_nnUNetRecipe):
    pass
