"""The base trainer of the comparison family: the training budget, the configurations each
network supports (2d and 3D, or 3D only), no torch.compile, patch rounding, checkpoints that
record their network, and the recipe read from class attributes. The recipes and run lengths
are in :mod:`.recipes`, the memory modes in :mod:`.memory`, the optimizer's groups in
:mod:`.parameter_groups`."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
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

from nnunetv2_segresmamba.optimizers.galore import DEFAULT_GAP, DEFAULT_SCALE, GaLoreAdamW
from nnunetv2_segresmamba.registry import (
    BOTH,
    DEFAULT_PLANS,
    Member,
    checkpointing_builder,
    on_plans,
    takes_checkpointing,
)
from nnunetv2_segresmamba.tools.checkpoints import PRE_RENAME_NETWORK_CLASS, load_checkpoint_file, pre_rename_error
from nnunetv2_segresmamba.tools.layout import write_member_record
from nnunetv2_segresmamba.tools.pipeline import require_nnunet_env
from nnunetv2_segresmamba.trainers.fine_tuning import mark, run_target
from nnunetv2_segresmamba.trainers.graceful_stop import GracefulStop
from nnunetv2_segresmamba.trainers.parameter_groups import fused_if_available, galore_groups, parameter_groups
from nnunetv2_segresmamba.trainers.schedules import CosineAnnealingScheduler
from nnunetv2_segresmamba.trainers.tracking import energy_record, energy_tracker_from_env, write_run_metrics


class ComparisonTrainerBase(GracefulStop, nnUNetTrainer):
    """Base of the comparison family. Subclasses set the recipe attributes below. Stops
    cleanly on SIGUSR1 and SIGTERM (:class:`~.graceful_stop.GracefulStop`).

    The recipe comes from a mixin listed before this base (:class:`~.recipes.NnUNetRecipe`,
    :class:`~.recipes.PaperRecipe`), so that a sibling can swap it: ``class X(NnUNetRecipe, Trainer)``.
    The budget (``num_epochs`` x ``num_iterations_per_epoch``) is nnU-Net's default and is
    set here only, so every network of the family trains for the same number of steps.
    Subclasses change class attributes only: nnU-Net re-creates trainers from the exact
    ``__init__`` signature, so no variant may override it.
    """

    member: Member | None = None  # the registry member whose network it trains; set by each member's trainer

    # training budget, one place for the whole family
    comparison_num_epochs = 1000
    comparison_iterations_per_epoch = 250
    comparison_val_iterations_per_epoch = 50
    comparison_save_every = 50  # epochs between checkpoint_latest.pth writes

    # recipe: each trainer takes a recipe mixin (NnUNetRecipe, PaperRecipe) or sets these itself
    optimizer_name: str  # "SGD" (nesterov, momentum 0.99), "AdamW" or "GaLoreAdamW" (optimizers.galore)
    recipe_initial_lr: float
    recipe_weight_decay: float
    lr_schedule: str  # "poly" or "cosine"
    recipe_min_lr = 0.0  # where the cosine schedule ends
    recipe_adam_eps = 1e-8  # AdamW's eps (torch's default)
    loss_name: str  # "dice_ce" (nnU-Net default), "dice" or "ce"
    deep_supervision = False
    patch_divisor: int | None = None  # round the planned patch to multiples of this (saved in plans.json)
    patch_min_multiple = 2  # and to at least this many multiples per axis (the voxels of the deepest feature map)
    supported_spatial_dims: tuple[int, ...] = BOTH  # 2: nnU-Net's 2d configuration; 3: 3d_fullres, lowres, cascade
    seed: int | None = None  # seeds the network's initialisation and the batches; None: unseeded, as nnU-Net
    network_widths: dict = {}  # overrides of the network's default widths (smaller networks for smoke runs)
    decay_every_parameter = False  # True: also the ToM's A_log and D (as nnU-Net's own SGD over all parameters)
    activation_checkpointing = False  # True: the network recomputes activations in the backward pass (_lowmem)
    # optimizer_name "GaLoreAdamW" (the _GaLore variants): the projection of Linear and conv weights' gradients.
    # Rank 64 (GaLore's example: 128 for width 512): SegResMamba's state 0.25x AdamW's at paper widths
    galore_rank, galore_update_proj_gap, galore_scale = 64, DEFAULT_GAP, DEFAULT_SCALE

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        require_nnunet_env(("nnUNet_preprocessed", "nnUNet_results"))
        planned = round_patch_in_plans(plans, configuration, self.patch_divisor, self.patch_min_multiple)
        configuration_manager = PlansManager(plans).get_configuration(configuration)
        require_supported_configuration(configuration_manager.patch_size, configuration, type(self).__name__,
                                        self.supported_spatial_dims)
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

    def initialize(self) -> None:
        """nnU-Net's, with the random generators seeded first when :attr:`seed` is set; then the
        network is marked with its member's output layers and this run, so that
        ``-pretrained_weights`` leaves those out (:mod:`.fine_tuning`), and the member is recorded
        in the fold folder (``tools.layout.write_member_record``), also for ``--val``."""
        if self.seed is not None and not self.was_initialized:
            seed_everything(self.seed)
        super().initialize()
        family_member = type(self).family_member(self.plans_manager.plans_name)
        if family_member is not None:
            mark(self.network, run_target(self, family_member))
        if self.local_rank == 0:  # for reports, which name networks without importing the trainers
            write_member_record(self.output_folder, type(self).__name__,
                                family_member.network if family_member is not None else None)

    @classmethod
    def family_member(cls, plans: str = DEFAULT_PLANS) -> Member | None:
        """The registry member this trainer trains (:attr:`member`, which its variants inherit), as
        it is on ``plans`` (nnU-Net's trainer on ResEnc M plans: "nnU-Net ResEnc M"); None for a
        trainer that names none."""
        return on_plans(cls.member, plans) if cls.member is not None else None

    def get_dataloaders(self):
        """nnU-Net's loaders. A seeded run samples and augments its batches in this process, since
        nnU-Net's worker processes draw unseeded. A run resumed at epoch k (``--c``) reseeds with
        ``seed + k`` first, so that it does not replay the batches of epoch 0."""
        if self.seed is None:
            return super().get_dataloaders()
        if self.current_epoch:
            seed_everything(self.seed + self.current_epoch)
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
        check of the input channels (:func:`require_input_channels`). Plans of a run trained before
        SegResMamba's output layer was renamed are refused (:func:`~..tools.checkpoints.pre_rename_error`)."""
        architecture = configuration_manager.configuration.get("architecture") or {}
        if architecture.get("network_class_name") == PRE_RENAME_NETWORK_CLASS:
            raise pre_rename_error(f"The plans' configuration (its 'architecture': {architecture.get('arch_kwargs')})")
        network = cls.build_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                    enable_deep_supervision)
        require_input_channels(network, num_input_channels)
        return network

    build_network = staticmethod(nnUNetTrainer.build_network_architecture)  # from the plans; subclasses override

    def bare_network(self) -> nn.Module:
        """The network itself, out of DDP's and torch.compile's wrappers."""
        network = self.network.module if self.is_ddp else self.network
        return getattr(network, "_orig_mod", network)  # torch.compile's wrapper

    def architecture(self) -> dict:
        """What a checkpoint records of its network, beside ``network_weights``: the class, for
        networks that have them (SegResMamba) the arguments it was built with, and the registry
        member's network name (None outside the family)."""
        network, member = self.bare_network(), self.family_member(self.plans_manager.plans_name)
        return {"network_class_name": f"{type(network).__module__}.{type(network).__qualname__}",
                "arch_kwargs": getattr(network, "arch_kwargs", None),
                "member": member.network if member is not None else None}

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint with the network's :meth:`architecture` beside its weights, written
        to a temporary file first and then renamed, so that a run killed while saving leaves the
        previous checkpoint intact instead of a truncated one."""
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)  # nothing to write (nnU-Net logs why)
        checkpoint = {
            "network_weights": self.bare_network().state_dict(),
            "architecture": self.architecture(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
        }  # nnU-Net 2.8's keys, and "architecture"
        partial = filename + ".partial"
        torch.save(checkpoint, partial)
        os.replace(partial, filename)

    def load_checkpoint(self, filename_or_checkpoint: str) -> None:
        """nnU-Net's (``--c``, ``--val``), after checking that the checkpoint holds the network
        these plans build. A file that cannot be read is named, with what to do. Takes a path:
        nnU-Net 2.8.1's own ``load_checkpoint`` fails on a dict."""
        if not isinstance(filename_or_checkpoint, str):
            raise TypeError(f"load_checkpoint takes the path of a checkpoint file, got {type(filename_or_checkpoint)}")
        saved = load_checkpoint_file(filename_or_checkpoint, "cpu", mmap=True)  # tensors left on disk: for the check
        if not self.was_initialized:
            self.initialize()
        require_same_architecture(saved.get("architecture"), self.architecture(), filename_or_checkpoint)
        super().load_checkpoint(filename_or_checkpoint)

    def _do_i_compile(self) -> bool:
        return False  # torch.compile is not measured to work with the Mamba scans

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        if self.deep_supervision:
            super().set_deep_supervision_enabled(enabled)

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, _LRScheduler]:
        """The recipe's optimizer over :func:`parameter_groups` and its schedule."""
        params = parameter_groups(self.network, self.weight_decay, exempt_marked=not self.decay_every_parameter)
        if self.optimizer_name == "AdamW":
            optimizer = fused_if_available(torch.optim.AdamW, params, lr=self.initial_lr,
                                           weight_decay=self.weight_decay, eps=self.recipe_adam_eps)
        elif self.optimizer_name == "GaLoreAdamW":
            optimizer = GaLoreAdamW(galore_groups(self.network, params, self.galore_rank, self.galore_update_proj_gap,
                                                  self.galore_scale),
                                    lr=self.initial_lr, weight_decay=self.weight_decay, eps=self.recipe_adam_eps)
        elif self.optimizer_name == "SGD":
            optimizer = fused_if_available(torch.optim.SGD, params, lr=self.initial_lr,
                                           weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        else:
            raise ValueError(f"unknown optimizer_name {self.optimizer_name!r}: use 'SGD', 'AdamW' or 'GaLoreAdamW'")
        fused = optimizer.defaults.get("fused")  # fused_if_available falls back where torch has no fused kernel
        self.print_to_log_file(f"optimizer: {type(optimizer).__name__}{' (fused)' if fused else ' (not fused)'}")
        if self.lr_schedule == "cosine":
            return optimizer, CosineAnnealingScheduler(optimizer, self.initial_lr, self.num_epochs,
                                                       min_lr=self.recipe_min_lr)
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


SMOKE_FEATURE_SIZES = (16, 32, 64, 128)  # SegResMamba's and SegMamba's stage widths in smoke runs: a third


def network_of(member: Member) -> classmethod:
    """A ``build_network`` (nnU-Net 2.8's ``build_network_architecture`` signature) that builds
    the registry ``member``'s network for the configuration's patch, with the trainer's
    ``network_widths``, and ``checkpointing=True`` for a trainer with ``activation_checkpointing``
    where the member's builder takes it (then marked :func:`~nnunetv2_segresmamba.registry.checkpointing_builder`;
    :class:`~.memory.LowMemory` refuses the others). No deep supervision: the flag is ignored."""
    checkpoints = takes_checkpointing(member.builder)

    def build_network(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                      num_input_channels: int, num_output_channels: int,
                      enable_deep_supervision: bool = True) -> nn.Module:
        options = {"checkpointing": True} if checkpoints and cls.activation_checkpointing else {}
        return member.build(num_input_channels, num_output_channels, configuration_manager.patch_size,
                            **cls.network_widths, **options)

    return classmethod(checkpointing_builder(build_network) if checkpoints else build_network)


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


RUNTIME_ARCH_KWARGS = ("checkpointing",)  # recorded in arch_kwargs, but the weights do not depend on them


def require_same_architecture(saved: dict | None, built: dict, path: str) -> None:
    """ValueError, naming what differs and what to do, unless a checkpoint's ``architecture``
    (``saved``; None in checkpoints that record none, such as nnU-Net's own) is ``built``, the
    :meth:`ComparisonTrainerBase.architecture` of the network built now. The
    :data:`RUNTIME_ARCH_KWARGS` may differ (or be missing, in checkpoints written before them):
    a run trained with activation checkpointing loads into the network without, and back."""
    if saved is None:
        return
    saved, built = _flat_architecture(saved), _flat_architecture(built)
    if saved == built:
        return
    details = "; ".join(f"{key}: checkpoint {saved.get(key)}, plans {built.get(key)}"
                        for key in sorted({**saved, **built}) if saved.get(key) != built.get(key))
    raise ValueError(
        f"{path} holds another network than these plans build ({details}). Nothing was loaded. The plans were "
        "changed after training: restore the run's plans.json (the checkpoint's 'init_args' hold the plans it was "
        "trained with), or train anew with the new plans."
    )


def _flat_architecture(architecture: dict) -> dict:
    kwargs = {k: v for k, v in (architecture.get("arch_kwargs") or {}).items() if k not in RUNTIME_ARCH_KWARGS}
    return {"network_class_name": architecture.get("network_class_name"), **kwargs}


def round_patch_in_plans(plans: dict, configuration: str, divisor: int | None, min_multiple: int = 2) -> list[int]:
    """Rounds the configuration's patch size in ``plans`` (in place) to the nearest multiples of
    ``divisor``, at least ``min_multiple`` of them on each axis (2: the deepest feature map keeps 2
    voxels, as :func:`~nnunetv2_segresmamba.networks.blocks.padded_size` pads). nnU-Net saves these
    plans into the run's output folder, so ``nnUNetv2_predict`` uses the same patch. Returns the
    patch size as planned."""
    configurations = plans["configurations"]
    config = configurations[configuration]
    while "patch_size" not in config and "inherits_from" in config:
        config = configurations[config["inherits_from"]]
    planned = list(config["patch_size"])
    if divisor:
        rounded = [max(min_multiple, int(s / divisor + 0.5)) * divisor for s in planned]
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
                  "family, e.g. nnUNetTrainerSegResMamba (see documentation/configurations.md)")
    elif tuple(spatial_dims) == (2,):
        advice = (f"Use the 2d configuration: nnUNetv2_train DATASET 2d FOLD -tr {trainer_name}. For 3D, train "
                  "another trainer of the family, e.g. nnUNetTrainerSegResMamba (see "
                  "documentation/configurations.md)")
    else:
        advice = f"Use a 2d or 3D configuration: nnUNetv2_train DATASET 3d_fullres FOLD -tr {trainer_name}"
    kinds = " and ".join(f"{d}D" for d in spatial_dims)
    raise ValueError(f"{trainer_name} trains {kinds} networks only, but configuration '{configuration}' has a "
                     f"{len(patch_size)}D patch {list(patch_size)}. {advice}.")
