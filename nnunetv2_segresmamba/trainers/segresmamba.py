"""nnU-Net trainers for SegResMamba."""

from __future__ import annotations

import torch.nn as nn
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_segresmamba.networks.segresmamba import SegResMamba
from nnunetv2_segresmamba.trainers.base import ComparisonTrainerBase, SmokeSchedule, TwoEpochs


class nnUNetTrainerSegResMamba(ComparisonTrainerBase):
    """SegResMamba in the nnU-Net pipeline, with the paper's recipe (appendix A).

    - optimizer: AdamW, lr 1e-4, weight decay 1e-5
    - schedule: cosine annealing over the run, stepped per epoch
    - loss: soft Dice (foreground classes; all regions for region-based datasets)
    - deep supervision: none (one full-resolution output)
    - budget: the comparison family's, nnU-Net's 1000 epochs x 250 iterations. The paper
      trained BTCV for 25,000 steps (100 such epochs); nnU-Net's own patch size, batch
      size, augmentation and sliding-window inference are used unchanged.
    - network: strides adapted per axis to the planned patch size (no padding), see
      :func:`nnunetv2_segresmamba.networks.segresmamba.plan_strides`.
    - torch.compile: off.
    """

    optimizer_name = "AdamW"
    recipe_initial_lr = 1e-4
    recipe_weight_decay = 1e-5
    lr_schedule = "cosine"
    loss_name = "dice"

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager,
                                   configuration_manager: ConfigurationManager,
                                   num_input_channels: int,
                                   num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return SegResMamba.for_patch_size(num_input_channels, num_output_channels, configuration_manager.patch_size)


class nnUNetTrainerSegResMamba_2epochs(TwoEpochs, nnUNetTrainerSegResMamba):
    pass


class nnUNetTrainerSegResMamba_smoke(SmokeSchedule, nnUNetTrainerSegResMamba):
    """The smoke schedule with lr 1e-3, so that so few steps of AdamW learn something."""

    recipe_initial_lr = 1e-3
