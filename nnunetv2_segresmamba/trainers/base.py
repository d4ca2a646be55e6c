"""What every trainer of the comparison family shares: the training budget, the
configurations each network supports (2d and 3D, or 3D only), no torch.compile, patch
rounding, and recipes set as class attributes."""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import softmax_helper_dim1
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch.optim.lr_scheduler import _LRScheduler

from nnunetv2_segresmamba.registry import BOTH
from nnunetv2_segresmamba.tools.pipeline import require_nnunet_env
from nnunetv2_segresmamba.trainers.schedules import CosineAnnealingScheduler
from nnunetv2_segresmamba.trainers.tracking import energy_record, energy_tracker_from_env, write_run_metrics


class NnUNetRecipe:
    """Mixin: nnU-Net's recipe, SGD lr 1e-2 (nesterov, momentum 0.99, weight decay 3e-5), poly
    schedule, Dice + cross-entropy. Deep supervision is the network's choice, not set here."""

    optimizer_name = "SGD"
    recipe_initial_lr = 1e-2
    recipe_weight_decay = 3e-5
    lr_schedule = "poly"
    loss_name = "dice_ce"


class PaperRecipe:
    """Mixin: the SegResMamba paper's recipe (appendix A), AdamW lr 1e-4 (weight decay 1e-5),
    cosine annealing, soft Dice, no deep supervision."""

    optimizer_name = "AdamW"
    recipe_initial_lr = 1e-4
    recipe_weight_decay = 1e-5
    lr_schedule = "cosine"
    loss_name = "dice"
    deep_supervision = False


class ComparisonTrainerBase(nnUNetTrainer):
    """Base of the comparison family. Subclasses set the recipe attributes below.

    The recipe comes from a mixin listed before this base (:class:`NnUNetRecipe`,
    :class:`PaperRecipe`), so that a sibling can swap it: ``class X(NnUNetRecipe, Trainer)``.
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

    # recipe: each trainer takes a recipe mixin (NnUNetRecipe, PaperRecipe) or sets these itself
    optimizer_name: str  # "SGD" (nesterov, momentum 0.99) or "AdamW"
    recipe_initial_lr: float
    recipe_weight_decay: float
    lr_schedule: str  # "poly" or "cosine"
    loss_name: str  # "dice_ce" (nnU-Net default), "dice" or "ce"
    deep_supervision = False
    patch_divisor: int | None = None  # round the planned patch to multiples of this (saved in plans.json)
    supported_spatial_dims: tuple[int, ...] = BOTH  # 2: nnU-Net's 2d configuration; 3: 3d_fullres, lowres, cascade
    seed: int | None = None  # seeds the network's initialisation and the batches; None: unseeded, as nnU-Net

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        require_nnunet_env(("nnUNet_preprocessed", "nnUNet_results"))
        planned = round_patch_in_plans(plans, configuration, self.patch_divisor)
        configuration_manager = PlansManager(plans).get_configuration(configuration)
        require_supported_configuration(configuration_manager.patch_size, configuration, type(self).__name__,
                                        self.supported_spatial_dims)
        architecture = self.architecture_for_plans(configuration_manager)
        if architecture is not None:  # nnU-Net saves these plans as the run's plans.json, read at predict
            plans["configurations"][configuration]["architecture"] = architecture
        super().__init__(plans, configuration, fold, dataset_json, device)
        if planned != list(self.configuration_manager.patch_size):
            self.print_to_log_file(f"patch size {planned} rounded to {self.configuration_manager.patch_size} "
                                   f"(multiples of {self.patch_divisor}); saved in this run's plans.json")
        self.num_epochs = self.comparison_num_epochs
        self.num_iterations_per_epoch = self.comparison_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.comparison_val_iterations_per_epoch
        self.save_every = self.comparison_save_every
        self.initial_lr = self.recipe_initial_lr
        self.weight_decay = self.recipe_weight_decay
        self.enable_deep_supervision = self.deep_supervision

    @classmethod
    def architecture_for_plans(cls, configuration_manager: ConfigurationManager) -> dict | None:
        """The configuration's ``architecture`` (nnU-Net 2.8's ``network_class_name``,
        ``arch_kwargs``, ``_kw_requires_import``) to store in the run's plans.json, or None to keep
        the planned one. Networks whose arguments are not all in the plans override this."""
        return None

    def initialize(self) -> None:
        """nnU-Net's, with the random generators seeded first when :attr:`seed` is set."""
        if self.seed is not None and not self.was_initialized:
            seed_everything(self.seed)
        super().initialize()

    def get_dataloaders(self):
        """nnU-Net's loaders. A seeded run samples and augments its batches in this process, since
        nnU-Net's worker processes draw unseeded."""
        if self.seed is None:
            return super().get_dataloaders()
        with environment_variable("nnUNet_n_proc_DA", "0"):
            return super().get_dataloaders()

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

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """nnU-Net's entry point (training and ``nnUNetv2_predict``): :meth:`build_network`, and a
        check of the input channels (:func:`require_input_channels`)."""
        network = cls.build_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                    enable_deep_supervision)
        require_input_channels(network, num_input_channels)
        return network

    build_network = staticmethod(nnUNetTrainer.build_network_architecture)  # from the plans; subclasses override

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """nnU-Net's, with an error that names the file and says what to do if it cannot be read."""
        if isinstance(filename_or_checkpoint, str) and not zipfile.is_zipfile(filename_or_checkpoint):
            raise read_checkpoint_error(filename_or_checkpoint, zipfile.BadZipFile("not a zip archive"))
        try:
            super().load_checkpoint(filename_or_checkpoint)
        except ValueError as error:  # nnU-Net loads everything else before the optimizer state
            if "parameter groups" not in str(error) or not isinstance(filename_or_checkpoint, str):
                raise
            self._load_single_group_optimizer_state(filename_or_checkpoint)
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as error:
            raise read_checkpoint_error(str(filename_or_checkpoint), error) from error
        except RuntimeError as error:
            if "PytorchStreamReader" not in str(error):
                raise
            raise read_checkpoint_error(str(filename_or_checkpoint), error) from error

    def _load_single_group_optimizer_state(self, filename: str) -> None:
        """The optimizer (and grad scaler) state of a run saved before the weight-decay groups."""
        checkpoint = torch.load(filename, map_location=self.device, weights_only=False)
        network = self.network.module if self.is_ddp else self.network
        self.optimizer.load_state_dict(regroup_optimizer_state(
            checkpoint["optimizer_state"], self.optimizer.param_groups, list(network.parameters())))
        if self.grad_scaler is not None and checkpoint.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's, written to a temporary file first and then renamed, so that a run killed
        while saving leaves the previous checkpoint intact instead of a truncated one."""
        partial = filename + ".partial"
        super().save_checkpoint(partial)
        if os.path.exists(partial):
            os.replace(partial, filename)

    def _do_i_compile(self) -> bool:
        return False  # torch.compile is not measured to work with the Mamba scans

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        if self.deep_supervision:
            super().set_deep_supervision_enabled(enabled)

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, _LRScheduler]:
        """The recipe's optimizer over :func:`parameter_groups` and its schedule."""
        params = parameter_groups(self.network, self.weight_decay)
        if self.optimizer_name == "AdamW":
            optimizer = fused_if_available(torch.optim.AdamW, params, lr=self.initial_lr,
                                           weight_decay=self.weight_decay)
        elif self.optimizer_name == "SGD":
            optimizer = fused_if_available(torch.optim.SGD, params, lr=self.initial_lr,
                                           weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
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


def fused_if_available(optimizer_class: type[torch.optim.Optimizer], params: list[dict],
                       **kwargs) -> torch.optim.Optimizer:
    """``optimizer_class(params, fused=True, **kwargs)``: one kernel updates every parameter, not
    a Python loop over them (several times faster on a CPU); unfused where torch has no fused
    kernel for the parameters' device. The update is the same algorithm either way."""
    try:
        return optimizer_class(params, fused=True, **kwargs)
    except RuntimeError:  # "`fused=True` requires all the params to be ... of supported devices"
        return optimizer_class(params, **kwargs)


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's random generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def environment_variable(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` inside the block; the previous state afterwards."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


class TwoEpochs:
    """Mixin: two epochs of the full iteration count, a quick check on a real dataset."""

    comparison_num_epochs = 2


class SmokeSchedule:
    """Mixin: a pipeline check in a few CPU minutes: 2 epochs x 4 iterations, 1 validation
    iteration, a checkpoint every epoch, seeded. Trains, validates, saves and predicts; learns little."""

    comparison_num_epochs = 2
    comparison_iterations_per_epoch = 4
    comparison_val_iterations_per_epoch = 1
    comparison_save_every = 1
    seed = 0


class AblationSmokeSchedule(SmokeSchedule):
    """Mixin: the cheapest run that still trains, validates, saves and predicts through the CLI:
    1 epoch x 2 iterations. For the ablations, whose networks the full smoke runs already cover."""

    comparison_num_epochs = 1
    comparison_iterations_per_epoch = 2


def parameter_groups(network: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups: every parameter with ``weight_decay``, except those marked
    ``_no_weight_decay`` (the ToM's ``A_log``, ``D`` and their ``_b``/``_s`` twins, as in
    mamba_ssm), which get none. Norm weights and biases keep the recipe's weight decay: each
    recipe of the family (nnU-Net, MONAI's tutorials, SegMamba's script) decays them, and the
    comparison reproduces those recipes. The second group is left out when nothing is marked."""
    decay, no_decay = [], []
    for parameter in network.parameters():
        if parameter.requires_grad:
            (no_decay if getattr(parameter, "_no_weight_decay", False) else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def regroup_optimizer_state(state: dict, groups: list[dict], parameters: list[nn.Parameter]) -> dict:
    """An optimizer state saved with one parameter group (runs from before
    :func:`parameter_groups`) split like ``groups``, so ``--c`` resumes such runs; any other
    state is returned as it is. ``parameters`` is the network's parameter order of that group."""
    if len(state["param_groups"]) != 1 or len(groups) == 1:
        return state
    old_index = {id(p): i for i, p in enumerate(p for p in parameters if p.requires_grad)}
    new_state, new_groups, k = {}, [], 0
    for group in groups:
        indices = []
        for parameter in group["params"]:
            if old_index[id(parameter)] in state["state"]:
                new_state[k] = state["state"][old_index[id(parameter)]]
            indices.append(k)
            k += 1
        new_groups.append({**state["param_groups"][0], "params": indices, "weight_decay": group["weight_decay"]})
    return {"state": new_state, "param_groups": new_groups}


def network_from_builder(builder: Callable[[int, int, Sequence[int]], nn.Module]) -> staticmethod:
    """A ``build_network`` (nnU-Net 2.8's ``build_network_architecture`` signature) that calls
    ``builder(in_channels, out_channels, patch_size)``. No deep supervision: the flag is ignored."""

    def build_network(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                      num_input_channels: int, num_output_channels: int,
                      enable_deep_supervision: bool = True) -> nn.Module:
        return builder(num_input_channels, num_output_channels, configuration_manager.patch_size)

    return staticmethod(build_network)


def require_input_channels(network: nn.Module, num_input_channels: int) -> None:
    """Makes ``network`` refuse an input (B, C, ...) whose C is not ``num_input_channels`` with
    an error that says which files to fix, before any layer sees it."""

    def check(module: nn.Module, args: tuple) -> None:
        channels = args[0].shape[1] if args and args[0].dim() > 1 else None
        if channels != num_input_channels:
            raise ValueError(
                f"This model was trained on {num_input_channels} input channel(s) (the 'channel_names' of the "
                f"dataset.json in its trained model folder) but got {channels}. Each case given to "
                f"nnUNetv2_predict -i needs exactly the files CASE_0000 to CASE_{num_input_channels - 1:04d} "
                "(with the dataset's file ending): add the missing channels or remove the extra ones."
            )

    network.register_forward_pre_hook(check)


def read_checkpoint_error(path: str, error: BaseException) -> RuntimeError:
    """The error for a checkpoint file that cannot be read, saying what to do."""
    folder = os.path.dirname(path)
    return RuntimeError(
        f"{path} is not a readable checkpoint (truncated or corrupt: {type(error).__name__}: {error}). Nothing was "
        f"changed. Move it aside, e.g. mv {path} {path}.corrupt: nnUNetv2_train --c then resumes from the next "
        f"checkpoint it finds in {folder} (checkpoint_final, checkpoint_latest, checkpoint_best, in that order) "
        "or starts over, and nnUNetv2_predict -chk picks another checkpoint."
    )


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


def require_supported_configuration(patch_size: Sequence[int], configuration: str, trainer_name: str,
                                    spatial_dims: Sequence[int] = BOTH) -> None:
    """ValueError, saying which configurations to use instead, unless the configuration's patch
    has one of ``spatial_dims`` axes (the trainer's ``supported_spatial_dims``)."""
    if len(patch_size) in spatial_dims:
        return
    if tuple(spatial_dims) == (3,):
        advice = (f"Use a 3D configuration (3d_fullres, 3d_lowres, 3d_cascade_fullres): "
                  f"nnUNetv2_train DATASET 3d_fullres FOLD -tr {trainer_name}. For 2d, train another trainer of the "
                  "family, e.g. nnUNetTrainerSegResMamba (see the README's configuration table)")
    else:
        advice = f"Use a 2d or 3D configuration: nnUNetv2_train DATASET 3d_fullres FOLD -tr {trainer_name}"
    kinds = " and ".join(f"{d}D" for d in spatial_dims)
    raise ValueError(f"{trainer_name} trains {kinds} networks only, but configuration '{configuration}' has a "
                     f"{len(patch_size)}D patch {list(patch_size)}. {advice}.")
