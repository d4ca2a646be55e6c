"""What every trainer of the comparison family shares: the training budget, 3D-only
configurations, no torch.compile, patch rounding, and recipes set as class attributes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import softmax_helper_dim1
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch.optim.lr_scheduler import _LRScheduler

from nnunetv2_segresmamba.tools.pipeline import require_nnunet_env
from nnunetv2_segresmamba.trainers.schedules import CosineAnnealingScheduler
from nnunetv2_segresmamba.trainers.tracking import energy_record, energy_tracker_from_env, write_run_metrics


class ComparisonTrainerBase(nnUNetTrainer):
    """Base of the comparison family. Subclasses set the recipe attributes below.

    The budget (``num_epochs`` x ``num_iterations_per_epoch``) is nnU-Net's default and is
    set here only, so every network of the family trains for the same number of steps.
    Subclasses change class attributes only: nnU-Net re-creates trainers from the exact
    ``__init__`` signature, so no variant may override it.
    """

    # training budget, one place for the whole family
    comparison_num_epochs = 1000
    comparison_iterations_per_epoch = 250
    comparison_val_iterations_per_epoch = 50
    comparison_save_every = 50  # epochs between checkpoint_latest.pth writes

    # recipe; subclasses override
    optimizer_name = "SGD"  # "SGD" (nesterov, momentum 0.99) or "AdamW"
    recipe_initial_lr = 1e-2
    recipe_weight_decay = 3e-5
    lr_schedule = "poly"  # "poly" or "cosine"
    loss_name = "dice_ce"  # "dice_ce" (nnU-Net default), "dice" or "ce"
    deep_supervision = False
    patch_divisor: int | None = None  # round the planned patch to multiples of this (saved in plans.json)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        require_nnunet_env(("nnUNet_preprocessed", "nnUNet_results"))
        planned = round_patch_in_plans(plans, configuration, self.patch_divisor)
        super().__init__(plans, configuration, fold, dataset_json, device)
        if planned != list(self.configuration_manager.patch_size):
            self.print_to_log_file(f"patch size {planned} rounded to {self.configuration_manager.patch_size} "
                                   f"(multiples of {self.patch_divisor}); saved in this run's plans.json")
        require_3d_configuration(self.configuration_manager.patch_size, configuration, type(self).__name__)
        self.num_epochs = self.comparison_num_epochs
        self.num_iterations_per_epoch = self.comparison_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.comparison_val_iterations_per_epoch
        self.save_every = self.comparison_save_every
        self.initial_lr = self.recipe_initial_lr
        self.weight_decay = self.recipe_weight_decay
        self.enable_deep_supervision = self.deep_supervision

    def on_train_start(self) -> None:
        """Also starts energy tracking when asked for (see :mod:`.tracking`)."""
        self._first_epoch_this_process = self.current_epoch
        self._energy_tracker = None
        if self.local_rank == 0:  # before nnU-Net starts its workers, so a bad setting fails fast
            self._energy_tracker = energy_tracker_from_env(self.output_folder, type(self).__name__)
        super().on_train_start()

    def on_train_end(self) -> None:
        """Also writes ``run_metrics.json``: epoch times, peak GPU memory, energy."""
        super().on_train_end()
        if self.local_rank == 0:
            energy = energy_record(self._energy_tracker) if self._energy_tracker is not None else None
            write_run_metrics(self.output_folder, self.logger, self.device,
                              self._first_epoch_this_process, energy)

    def _do_i_compile(self) -> bool:
        return False  # torch.compile is not measured to work with the Mamba scans

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        if self.deep_supervision:
            super().set_deep_supervision_enabled(enabled)

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, _LRScheduler]:
        params = self.network.parameters()
        if self.optimizer_name == "AdamW":
            optimizer = torch.optim.AdamW(params, lr=self.initial_lr, weight_decay=self.weight_decay)
        elif self.optimizer_name == "SGD":
            optimizer = torch.optim.SGD(params, self.initial_lr, weight_decay=self.weight_decay,
                                        momentum=0.99, nesterov=True)
        else:
            raise ValueError(f"unknown optimizer_name {self.optimizer_name!r}: use 'SGD' or 'AdamW'")
        if self.lr_schedule == "cosine":
            return optimizer, CosineAnnealingScheduler(optimizer, self.initial_lr, self.num_epochs)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _build_loss(self):
        if self.loss_name == "dice_ce":
            return super()._build_loss()
        if self.loss_name not in ("dice", "ce") or self.deep_supervision:
            raise ValueError(f"loss_name {self.loss_name!r}: use 'dice_ce', or 'dice'/'ce' without deep supervision")
        regions = self.label_manager.has_regions
        if self.loss_name == "ce":
            if regions:
                raise ValueError("cross-entropy needs classes, not regions; use loss_name = 'dice_ce'")
            ignore = self.label_manager.ignore_label
            return RobustCrossEntropyLoss(ignore_index=ignore if ignore is not None else -100)
        if self.label_manager.ignore_label is not None:
            raise ValueError("the Dice-only recipe does not support an ignore label; use loss_name = 'dice_ce'")
        return MemoryEfficientSoftDiceLoss(
            apply_nonlin=torch.sigmoid if regions else softmax_helper_dim1,
            batch_dice=self.configuration_manager.batch_dice, do_bg=regions, smooth=1e-5, ddp=self.is_ddp,
        )


class TwoEpochs:
    """Mixin: two epochs of the full iteration count, a quick check on a real dataset."""

    comparison_num_epochs = 2


class SmokeSchedule:
    """Mixin: a pipeline check in a few CPU minutes: 2 epochs x 4 iterations, 1 validation
    iteration, a checkpoint every epoch. Trains, validates, saves and predicts; learns little."""

    comparison_num_epochs = 2
    comparison_iterations_per_epoch = 4
    comparison_val_iterations_per_epoch = 1
    comparison_save_every = 1


def network_from_builder(builder: Callable[[int, int, Sequence[int]], nn.Module]) -> staticmethod:
    """A ``build_network_architecture`` (nnU-Net 2.8 signature) that calls
    ``builder(in_channels, out_channels, patch_size)``. No deep supervision: the flag is ignored."""

    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return builder(num_input_channels, num_output_channels, configuration_manager.patch_size)

    return staticmethod(build_network_architecture)


def round_patch_in_plans(plans: dict, configuration: str, divisor: int | None) -> list[int]:
    """Rounds the configuration's patch size in ``plans`` (in place) to the nearest multiples of
    ``divisor``, at least twice ``divisor`` (the deepest feature map keeps 2 voxels per axis, as
    InstanceNorm needs). nnU-Net saves these plans into the run's output folder, so
    ``nnUNetv2_predict`` uses the same patch. Returns the patch size as planned."""
    configurations = plans["configurations"]
    config = configurations[configuration]
    while "patch_size" not in config and "inherits_from" in config:
        config = configurations[config["inherits_from"]]
    planned = list(config["patch_size"])
    if divisor:
        rounded = [max(2 * divisor, int(s / divisor + 0.5) * divisor) for s in planned]
        plans["configurations"][configuration]["patch_size"] = rounded
    return planned


def require_3d_configuration(patch_size, configuration: str, trainer_name: str) -> None:
    if len(patch_size) != 3:
        raise ValueError(
            f"{trainer_name} trains 3D networks, but configuration '{configuration}' has a "
            f"{len(patch_size)}D patch {list(patch_size)}. Use a 3D configuration: "
            f"nnUNetv2_train DATASET 3d_fullres FOLD -tr {trainer_name}"
        )
