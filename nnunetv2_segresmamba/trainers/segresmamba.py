"""nnU-Net trainers for SegResMamba: the paper's network and recipe, and its ablations."""

from __future__ import annotations

import os

import torch.nn as nn
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_segresmamba.networks.segresmamba import SegResMamba, arch_kwargs_for_plan, legacy_plan_strides
from nnunetv2_segresmamba.operators.directions import DIRECTIONS
from nnunetv2_segresmamba.trainers.base import (
    AblationSmokeSchedule,
    ComparisonTrainerBase,
    NnUNetRecipe,
    PaperRecipe,
    SmokeSchedule,
    TwoEpochs,
)

SEGRESMAMBA_CLASS = f"{SegResMamba.__module__}.{SegResMamba.__name__}"


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
      previous stage's one-hot segmentation as extra input channels, as nnU-Net gives them);
      strides from the plan's ``pool_op_kernel_sizes``
      (:func:`nnunetv2_segresmamba.networks.segresmamba.strides_from_pools`), written with
      the patch and the ToM's directions into the run's plans.json (``architecture`` ->
      ``arch_kwargs``) and into every checkpoint, so that prediction rebuilds this network.
    - torch.compile: off.
    """

    tom_directions: tuple[str, ...] = DIRECTIONS  # the ToM's scans; () replaces every ToM by identity

    @classmethod
    def architecture_for_plans(cls, configuration_manager: ConfigurationManager) -> dict:
        return {
            "network_class_name": SEGRESMAMBA_CLASS,
            "arch_kwargs": arch_kwargs_for_plan(configuration_manager.pool_op_kernel_sizes,
                                                configuration_manager.patch_size, cls.tom_directions),
            "_kw_requires_import": [],
        }

    @classmethod
    def build_network(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """The SegResMamba that the configuration's ``architecture`` describes. Runs trained
        before the architecture was stored get the strides they were trained with from the
        patch. No deep supervision: the flag is ignored."""
        architecture = configuration_manager.configuration["architecture"]
        where = plans_files(plans_manager, configuration_manager, cls.__name__)
        if architecture["network_class_name"] != SEGRESMAMBA_CLASS:  # a run from before
            stage_strides, block_strides = legacy_plan_strides(configuration_manager.patch_size)
            network = SegResMamba(num_input_channels, num_output_channels, stage_strides=stage_strides,
                                  block_strides=block_strides, spatial_dims=len(configuration_manager.patch_size))
        else:
            kwargs = architecture["arch_kwargs"]
            if list(kwargs["patch_size"]) != list(configuration_manager.patch_size):
                raise ValueError(
                    f"'patch_size' {list(configuration_manager.patch_size)} differs from the patch this SegResMamba "
                    f"was trained on, 'architecture' -> 'arch_kwargs' -> 'patch_size' {kwargs['patch_size']}, in "
                    f"{where}. Set 'patch_size' back to {kwargs['patch_size']}; to use another patch, train with it."
                )
            network = SegResMamba(num_input_channels, num_output_channels, **kwargs)
        network.arch_source = f"'architecture' -> 'arch_kwargs' in {where}"
        return network


def plans_files(plans_manager: PlansManager, configuration_manager: ConfigurationManager, trainer: str) -> str:
    """Where the plans of this configuration live: the run's plans.json (read by
    ``nnUNetv2_predict``) or nnU-Net's preprocessed plans (read by ``nnUNetv2_train``)."""
    plans = plans_manager.plans
    configuration = next((name for name in plans["configurations"] if
                          plans_manager.get_configuration(name).configuration == configuration_manager.configuration),
                         "CONFIGURATION")
    dataset, name = plans_manager.dataset_name, plans_manager.plans_name
    run = os.path.join(os.environ.get("nnUNet_results", "$nnUNet_results"), dataset,
                       f"{trainer}__{name}__{configuration}", "plans.json")
    preprocessed = os.path.join(os.environ.get("nnUNet_preprocessed", "$nnUNet_preprocessed"), dataset, f"{name}.json")
    return (f"configuration '{configuration}' of {run} (at nnUNetv2_predict; "
            f"at nnUNetv2_train, including --c: {preprocessed})")


class nnUNetTrainerSegResMamba_2epochs(TwoEpochs, nnUNetTrainerSegResMamba):
    pass


class nnUNetTrainerSegResMamba_smoke(SmokeSchedule, nnUNetTrainerSegResMamba):
    """Minutes on a CPU and still learning: 3 epochs x 12 iterations, 2 validation iterations,
    lr 1e-3 and Dice + cross-entropy, so that so few AdamW steps learn the synthetic dataset
    every time (with Dice alone, small structures sometimes never got started). Used by the
    demo and tests."""

    comparison_num_epochs = 3
    comparison_iterations_per_epoch = 12
    comparison_val_iterations_per_epoch = 2
    recipe_initial_lr = 1e-3
    loss_name = "dice_ce"


class nnUNetTrainerSegResMamba_pipeline(AblationSmokeSchedule, nnUNetTrainerSegResMamba):
    """1 epoch x 2 iterations, the cheapest run that trains, validates, saves and predicts through
    the CLI: for checks of nnU-Net's pipeline around a network that the ``_smoke`` runs already
    train (the cascade's two stages in the end-to-end tests)."""


class nnUNetTrainerSegResMamba_demo(nnUNetTrainerSegResMamba_smoke):
    """The demo's run: the smoke recipe, seeded, for 5 epochs x 24 iterations, enough to learn
    the synthetic dataset (mean Dice above 0.7 on its held-out cases) in a few CPU minutes."""

    comparison_num_epochs = 5
    comparison_iterations_per_epoch = 24


class nnUNetTrainerSegResMambaNoToM(nnUNetTrainerSegResMamba):
    """Ablation: every ToM (MambaLayer) replaced by identity, everything else the same; the
    control that nnU-Net Revisited ran for U-Mamba ("No-Mamba Base")."""

    tom_directions = ()


class nnUNetTrainerSegResMambaForwardToM(nnUNetTrainerSegResMamba):
    """Ablation: the ToM scans forward only (no reverse, no inter-slice scan)."""

    tom_directions = ("",)


class nnUNetTrainerSegResMambaForwardReverseToM(nnUNetTrainerSegResMamba):
    """Ablation: the ToM scans forward and reverse, without the inter-slice scan."""

    tom_directions = ("", "_b")


class nnUNetTrainerSegResMamba_nnUNetRecipe(NnUNetRecipe, nnUNetTrainerSegResMamba):
    """Ablation: SegResMamba with nnU-Net's recipe (SGD 1e-2 nesterov, poly, Dice + CE), the
    recipe of the family's nnU-Net sibling; SegResMamba has no deep supervision."""


class nnUNetTrainerSegResMambaNoToM_smoke(AblationSmokeSchedule, nnUNetTrainerSegResMambaNoToM):
    pass


class nnUNetTrainerSegResMambaForwardToM_smoke(AblationSmokeSchedule, nnUNetTrainerSegResMambaForwardToM):
    pass


class nnUNetTrainerSegResMambaForwardReverseToM_smoke(AblationSmokeSchedule, nnUNetTrainerSegResMambaForwardReverseToM):
    pass


class nnUNetTrainerSegResMamba_nnUNetRecipe_smoke(AblationSmokeSchedule, nnUNetTrainerSegResMamba_nnUNetRecipe):
    pass
