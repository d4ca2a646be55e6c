"""Swin-UMamba and Swin-UMamba-dagger (Liu et al., 2024) as siblings, with the official trainer
names and recipe: AdamW (lr 1e-4, weight decay 5e-2 on every parameter, eps 1e-5), cosine to 1e-6,
Dice + CE with deep supervision, 2d only.

The pretrained trainers start the encoder from VMamba-Tiny's ImageNet weights, read when
training starts (not when the network is built: ``nnUNetv2_predict`` needs the trained
checkpoint only) from the file ``$nnUNet_vmamba_weights`` names, checked tensor by tensor
(``networks.vmamba_weights``); and they train the encoder, except its patch embedding, only from
epoch 10 on. A run resumed with ``--c``, or started with ``-pretrained_weights``, keeps its own
weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_segresmamba.networks.swin_umamba import SwinUMamba, SwinUMambaD
from nnunetv2_segresmamba.networks.vmamba import VSSMEncoder
from nnunetv2_segresmamba.networks.vmamba_weights import load_vmamba_encoder
from nnunetv2_segresmamba.registry import network
from nnunetv2_segresmamba.trainers.base import ComparisonTrainerBase
from nnunetv2_segresmamba.trainers.recipes import QuickSmokeSchedule, TwoEpochs


class SwinUMambaRecipe(ComparisonTrainerBase):
    """What the Swin-UMamba trainers share: the official recipe, the 2d configuration, patches
    rounded to multiples of 32, and the ImageNet encoder with its frozen first epochs."""

    member = network("Swin-UMamba")
    network_class: type[nn.Module] = SwinUMamba
    imagenet_encoder = True  # False: trained from scratch
    frozen_encoder_epochs = 10  # epochs that train the encoder's patch embedding only (with imagenet_encoder)

    optimizer_name = "AdamW"
    recipe_initial_lr = 1e-4
    recipe_weight_decay = 5e-2
    recipe_adam_eps = 1e-5
    lr_schedule = "cosine"
    recipe_min_lr = 1e-6
    loss_name = "dice_ce"
    deep_supervision = True
    decay_every_parameter = True  # the official AdamW over network.parameters()
    patch_divisor = member.patch_divisor
    patch_min_multiple = 1  # a 1 x 1 deepest map meets LayerNorms and a transposed conv only
    supported_spatial_dims = member.spatial_dims

    @classmethod
    def build_network(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                      num_input_channels: int, num_output_channels: int,
                      enable_deep_supervision: bool = True) -> nn.Module:
        return cls.network_class(num_input_channels, num_output_channels, deep_supervision=enable_deep_supervision)

    def _get_deep_supervision_scales(self) -> list[list[float]] | None:
        if not self.enable_deep_supervision:
            return None
        return [[s, s] for s in self.network_class.deep_supervision_scales]

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        self.bare_network().set_deep_supervision(enabled)

    @property
    def encoder(self) -> VSSMEncoder:
        return self.bare_network().vssm_encoder

    def initialize(self) -> None:
        """nnU-Net's, then a checksum of the encoder as built, so that training can tell whether
        anything (``-pretrained_weights``, ``--c``) loaded other weights into it since."""
        super().initialize()
        self._built_encoder_checksum = encoder_checksum(self.encoder)

    @property
    def freezes_encoder(self) -> bool:
        return self.imagenet_encoder and self.frozen_encoder_epochs > 0

    def on_train_start(self) -> None:
        if not self.was_initialized:
            self.initialize()
        if self.is_ddp and self.freezes_encoder and self.current_epoch < self.frozen_encoder_epochs:
            raise RuntimeError(
                f"{type(self).__name__} freezes its encoder for the first {self.frozen_encoder_epochs} epochs, "
                "which nnU-Net's DistributedDataParallel does not allow (it waits for the frozen parameters' "
                "gradients). Train these epochs on one GPU and resume on more with --c, or train from scratch: "
                "nnUNetTrainerSwinUMambaScratch, nnUNetTrainerSwinUMambaDScratch.")
        if self.imagenet_encoder:
            self._maybe_load_imagenet_encoder()
        super().on_train_start()

    def _maybe_load_imagenet_encoder(self) -> None:
        if self.current_epoch > 0:
            self.print_to_log_file("resumed: the encoder keeps the checkpoint's weights (VMamba's are not loaded)")
            return
        if encoder_checksum(self.encoder) != self._built_encoder_checksum:
            self.print_to_log_file("the encoder holds weights loaded since it was built (-pretrained_weights): "
                                   "VMamba's ImageNet weights are not loaded over them")
            return
        self.print_to_log_file(load_vmamba_encoder(self.encoder).summary())

    def on_train_epoch_start(self) -> None:
        frozen = self.freezes_encoder and self.current_epoch < self.frozen_encoder_epochs
        self.encoder.freeze(frozen)
        if self.freezes_encoder and self.current_epoch <= self.frozen_encoder_epochs:
            self.print_to_log_file(f"encoder {'frozen except its patch embedding' if frozen else 'trained'} "
                                   f"(frozen for the first {self.frozen_encoder_epochs} epochs)")
        super().on_train_epoch_start()


@torch.no_grad()
def encoder_checksum(encoder: nn.Module) -> float:
    """A sum over every encoder tensor: changes when other weights are loaded."""
    return float(sum(t.double().abs().sum() for t in encoder.state_dict().values()))


class nnUNetTrainerSwinUMamba(SwinUMambaRecipe):
    """Swin-UMamba: stem, VMamba-Tiny encoder from ImageNet (patches of 2), MONAI UNETR decoder,
    deep supervision at 1 to 1/8; the official recipe (:class:`SwinUMambaRecipe`)."""


class nnUNetTrainerSwinUMambaD(SwinUMambaRecipe):
    """Swin-UMamba-dagger: VMamba-Tiny encoder from ImageNet (patches of 4), VSS-block decoder,
    deep supervision at 1, 1/4, 1/8, 1/16; the official recipe."""

    member = network("Swin-UMamba-dagger")
    network_class = SwinUMambaD


class nnUNetTrainerSwinUMambaScratch(nnUNetTrainerSwinUMamba):
    """Swin-UMamba trained from scratch: no ImageNet weights, no frozen epochs."""

    member = network("Swin-UMamba-Scratch")
    imagenet_encoder = False


class nnUNetTrainerSwinUMambaDScratch(nnUNetTrainerSwinUMambaD):
    """Swin-UMamba-dagger trained from scratch."""

    member = network("Swin-UMamba-dagger-Scratch")
    imagenet_encoder = False


class nnUNetTrainerSwinUMamba_2epochs(TwoEpochs, nnUNetTrainerSwinUMamba):
    pass


class nnUNetTrainerSwinUMamba_smoke(QuickSmokeSchedule, nnUNetTrainerSwinUMamba):
    pass


class nnUNetTrainerSwinUMambaD_2epochs(TwoEpochs, nnUNetTrainerSwinUMambaD):
    pass


class nnUNetTrainerSwinUMambaD_smoke(QuickSmokeSchedule, nnUNetTrainerSwinUMambaD):
    pass


class nnUNetTrainerSwinUMambaScratch_2epochs(TwoEpochs, nnUNetTrainerSwinUMambaScratch):
    pass


class nnUNetTrainerSwinUMambaScratch_smoke(QuickSmokeSchedule, nnUNetTrainerSwinUMambaScratch):
    pass


class nnUNetTrainerSwinUMambaDScratch_2epochs(TwoEpochs, nnUNetTrainerSwinUMambaDScratch):
    pass


class nnUNetTrainerSwinUMambaDScratch_smoke(QuickSmokeSchedule, nnUNetTrainerSwinUMambaDScratch):
    pass
