"""nnU-Net trainers for SegResMamba."""

from __future__ import annotations

from nnunetv2_segresmamba.registry import build_segresmamba
from nnunetv2_segresmamba.trainers.base import ComparisonTrainerBase, SmokeSchedule, TwoEpochs, network_from_builder


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
    build_network_architecture = network_from_builder(build_segresmamba)


class nnUNetTrainerSegResMamba_2epochs(TwoEpochs, nnUNetTrainerSegResMamba):
    pass


class nnUNetTrainerSegResMamba_smoke(SmokeSchedule, nnUNetTrainerSegResMamba):
    """Minutes on a CPU and still learning: 3 epochs x 12 iterations, 2 validation iterations,
    lr 1e-3 so that so few AdamW steps learn the synthetic dataset. Used by the demo and tests."""

    comparison_num_epochs = 3
    comparison_iterations_per_epoch = 12
    comparison_val_iterations_per_epoch = 2
    recipe_initial_lr = 1e-3
