"""U-Mamba (Ma et al., 2024) as siblings: the official trainer names, networks built from the
nnU-Net 2.8 plans as the official builders build them from 2.1.1 plans, and the official
recipe, which is nnU-Net's default trainer's (the official trainers inherit it unchanged)."""

from __future__ import annotations

import torch.nn as nn
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_segresmamba.networks.umamba import UMambaBot, UMambaEnc, arch_kwargs_for_plan
from nnunetv2_segresmamba.registry import checkpointing_builder, network
from nnunetv2_segresmamba.trainers.base import ComparisonTrainerBase
from nnunetv2_segresmamba.trainers.memory import LowMemory
from nnunetv2_segresmamba.trainers.recipes import NnUNetRecipe, QuickSmokeSchedule, TwoEpochs


class UMambaRecipe(NnUNetRecipe, ComparisonTrainerBase):
    """What the U-Mamba trainers share: nnU-Net's recipe as the official trainers inherit it, deep
    supervision, and weight decay on every parameter (nnU-Net's SGD over all of them)."""

    deep_supervision = True
    decay_every_parameter = True

    @classmethod
    @checkpointing_builder
    def build_network(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                      num_input_channels: int, num_output_channels: int,
                      enable_deep_supervision: bool = True) -> nn.Module:
        """The trainer's U-Mamba (:meth:`network_for`) from the plan's U-Net arguments, its block
        counts as U-Mamba's constructors rewrite them, He-initialised as the official builders do."""
        kwargs = arch_kwargs_for_plan(configuration_manager.network_arch_init_kwargs)
        return cls.network_for(num_input_channels, num_output_channels, list(configuration_manager.patch_size), kwargs,
                               enable_deep_supervision).initialize()

    @classmethod
    def network_for(cls, num_input_channels: int, num_output_channels: int, patch_size: list[int], kwargs: dict,
                    deep_supervision: bool) -> nn.Module:
        """The network of this trainer (U-Mamba Bot or Enc) for the plan's arguments ``kwargs``."""
        raise NotImplementedError


class nnUNetTrainerUMambaBot(UMambaRecipe):
    """U-Mamba Bot: a residual U-Net from the plans with one Mamba layer at the bottleneck; 2D or
    3D as the configuration's patch.

    - network: the plan's stages, widths, kernels and strides; its encoder block counts
      (``n_conv_per_stage``, or ``n_blocks_per_stage`` in ResEnc plans) and decoder block counts
      as U-Mamba's constructor rewrites them (:func:`~nnunetv2_segresmamba.networks.umamba.official_block_counts`);
      He initialisation (``InitWeights_He(1e-2)``); the Mamba layer on the ToM's backends, one
      direction, in fp32
    - recipe: nnU-Net's, SGD 1e-2 (nesterov, momentum 0.99), weight decay 3e-5 on every parameter
      (the Mamba layer's ``A_log`` and ``D`` too), poly, Dice + CE with deep supervision, the
      family's 1000 x 250 budget
    - official checkpoints (``network_weights`` of the official trainers) load with strict keys
    """

    member = network("U-Mamba Bot")
    mamba = True  # False: the Mamba layer is identity (the No-Mamba control)

    @classmethod
    def network_for(cls, num_input_channels: int, num_output_channels: int, patch_size: list[int], kwargs: dict,
                    deep_supervision: bool) -> nn.Module:
        return UMambaBot(num_input_channels, num_output_channels, **kwargs, deep_supervision=deep_supervision,
                         mamba=cls.mamba, checkpointing=cls.activation_checkpointing)


class nnUNetTrainerUMambaEnc(UMambaRecipe):
    """U-Mamba Enc: a Mamba layer after every encoder stage (in 2D every other stage), built for
    the configuration's patch (``input_size``: where a feature map has no more voxels than
    channels, its layer scans the channels). Otherwise as :class:`nnUNetTrainerUMambaBot`."""

    member = network("U-Mamba Enc")

    @classmethod
    def network_for(cls, num_input_channels: int, num_output_channels: int, patch_size: list[int], kwargs: dict,
                    deep_supervision: bool) -> nn.Module:
        return UMambaEnc(num_input_channels, num_output_channels, patch_size, **kwargs,
                         deep_supervision=deep_supervision, checkpointing=cls.activation_checkpointing)


class nnUNetTrainerUMambaBotNoMamba(nnUNetTrainerUMambaBot):
    """Control: U-Mamba Bot with its Mamba layer (LayerNorm and Mamba) replaced by identity, the
    "No-Mamba Base" of nnU-Net Revisited, which scored as well as U-Mamba Bot."""

    member = network("U-Mamba Bot-NoMamba")
    mamba = False


class nnUNetTrainerUMambaBot_lowmem(LowMemory, nnUNetTrainerUMambaBot):
    """U-Mamba Bot with activation checkpointing: the stem, each encoder stage and each decoder
    stage recomputed in the backward pass (:class:`~.memory.LowMemory`); the same network and recipe."""


class nnUNetTrainerUMambaEnc_lowmem(LowMemory, nnUNetTrainerUMambaEnc):
    """U-Mamba Enc with activation checkpointing, as :class:`nnUNetTrainerUMambaBot_lowmem` (each
    encoder stage with its Mamba layer)."""


class nnUNetTrainerUMambaBot_2epochs(TwoEpochs, nnUNetTrainerUMambaBot):
    pass


class nnUNetTrainerUMambaBot_smoke(QuickSmokeSchedule, nnUNetTrainerUMambaBot):
    pass


class nnUNetTrainerUMambaEnc_2epochs(TwoEpochs, nnUNetTrainerUMambaEnc):
    pass


class nnUNetTrainerUMambaEnc_smoke(QuickSmokeSchedule, nnUNetTrainerUMambaEnc):
    pass


class nnUNetTrainerUMambaBot_lowmem_smoke(QuickSmokeSchedule, nnUNetTrainerUMambaBot_lowmem):
    pass


class nnUNetTrainerUMambaEnc_lowmem_smoke(QuickSmokeSchedule, nnUNetTrainerUMambaEnc_lowmem):
    pass


class nnUNetTrainerUMambaBotNoMamba_2epochs(TwoEpochs, nnUNetTrainerUMambaBotNoMamba):
    pass


class nnUNetTrainerUMambaBotNoMamba_smoke(QuickSmokeSchedule, nnUNetTrainerUMambaBotNoMamba):
    pass
