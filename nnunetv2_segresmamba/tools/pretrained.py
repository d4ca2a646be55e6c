"""VMamba-Tiny's ImageNet checkpoint for the Swin-UMamba trainers: where it is (an environment
variable, in nnU-Net's style), reading it without running its pickled code, and checking it.

VMamba's checkpoints are training states: ``{"model": state_dict, "optimizer": ..., "config":
yacs CfgNode, ...}``. They are read with ``torch.load(weights_only=True)``, with the config's
class read as a plain dict, so neither yacs nor any code from the file is needed.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

VMAMBA_WEIGHTS_VAR = "nnUNet_vmamba_weights"
VMAMBA_FILE = "vssmtiny_dp01_ckpt_epoch_292.pth"
VMAMBA_URL = "https://github.com/MzeroMiko/VMamba/releases/download/%23v0cls/" + VMAMBA_FILE  # moved there, 2024-08


class PickledConfig:
    """Stands in for yacs' ``CfgNode`` (a dict with attributes) while a checkpoint is read: each
    is read as an OrderedDict, which torch's weights-only reader fills and gives attributes."""

    def __new__(cls, *args) -> OrderedDict:
        return OrderedDict()


def vmamba_weights_path() -> str:
    """The file that :data:`VMAMBA_WEIGHTS_VAR` names; an OSError saying what to do when it is
    unset or no file is there."""
    path = os.environ.get(VMAMBA_WEIGHTS_VAR)
    advice = (f"The pretrained Swin-UMamba trainers start from VMamba-Tiny's ImageNet weights ({VMAMBA_FILE}, "
              f"from {VMAMBA_URL}). Download it once and set {VMAMBA_WEIGHTS_VAR} to its path, e.g.\n"
              f"  wget {VMAMBA_URL}\n  export {VMAMBA_WEIGHTS_VAR}=$PWD/{VMAMBA_FILE}\n"
              f"then check it with: nnunetv2_segresmamba check-vmamba. Or train from scratch: "
              "nnUNetTrainerSwinUMambaScratch, nnUNetTrainerSwinUMambaDScratch.")
    if not path:
        raise OSError(f"{VMAMBA_WEIGHTS_VAR} is not set. {advice}")
    if not os.path.isfile(path):
        raise OSError(f"{VMAMBA_WEIGHTS_VAR}={path}: no such file. {advice}")
    return path


def read_vmamba_weights(path: str) -> dict[str, Tensor]:
    """The ``model`` state_dict of a VMamba checkpoint at ``path`` (or the file's own mapping when it
    holds tensors only), read with ``weights_only=True``; a ValueError saying why it is not one."""
    import torch

    with torch.serialization.safe_globals([(PickledConfig, "yacs.config.CfgNode")]):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{path} is not a readable VMamba checkpoint ({type(error).__name__}: {error}). "
                             f"Download {VMAMBA_FILE} again from {VMAMBA_URL}.") from error
    weights = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"{path} holds no state_dict: expected a VMamba checkpoint, {{'model': {{name: tensor}}, "
                         f"...}}, as {VMAMBA_FILE}.")
    return dict(weights)


def sha256_of(path: str) -> str:
    """The SHA-256 of the file at ``path``, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_vmamba_file(path: str) -> str:
    """A report on the VMamba checkpoint at ``path``: its SHA-256, its tensor count, and what each
    Swin-UMamba encoder would take from it. A ValueError where an encoder tensor would be missing
    or misshapen (nothing is trained or loaded here)."""
    import torch

    from nnunetv2_segresmamba.networks.swin_umamba import SwinUMamba, SwinUMambaD
    from nnunetv2_segresmamba.networks.vmamba import VSSMEncoder, encoder_state_from_vmamba

    weights = read_vmamba_weights(path)
    lines = [f"{path}", f"  sha256 {sha256_of(path)}", f"  {len(weights)} tensors"]
    encoders = {"Swin-UMamba": SwinUMamba.encoder_kwargs(),
                "Swin-UMamba-dagger, 3 input channels": SwinUMambaD.encoder_kwargs(3),
                "Swin-UMamba-dagger, other channel counts": SwinUMambaD.encoder_kwargs(1)}
    for name, kwargs in encoders.items():
        with torch.device("meta"):
            encoder = VSSMEncoder(**kwargs)
        loaded = encoder_state_from_vmamba(weights, encoder)
        lines.append(f"  {name}: {len(loaded.state)} of {len(encoder.state_dict())} encoder tensors "
                     f"(not used: {', '.join(loaded.skipped) or 'none'})")
    return "\n".join([*lines, "OK: the Swin-UMamba trainers can start from this file."])
