"""VMamba-Tiny's ImageNet checkpoint for the Swin-UMamba encoders, all in one place: where it is
(an environment variable, in nnU-Net's style), reading it without running its pickled code, mapping
its keys onto :class:`~nnunetv2_segresmamba.networks.vmamba.VSSMEncoder`, checking it tensor by
tensor, and loading it into an encoder.

VMamba's checkpoints are training states: ``{"model": state_dict, "optimizer": ..., "config":
yacs CfgNode, ...}``. They are read with ``torch.load(weights_only=True)``, with the config's
class read as a plain dict, so neither yacs nor any code from the file is needed.

Import-light: torch and the networks are imported by the functions that need them, so that the
command line can name the file and its variable without loading torch.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from nnunetv2_segresmamba.networks.vmamba import VSSMEncoder

VMAMBA_WEIGHTS_VAR = "nnUNet_vmamba_weights"
VMAMBA_FILE = "vssmtiny_dp01_ckpt_epoch_292.pth"
VMAMBA_URL = "https://github.com/MzeroMiko/VMamba/releases/download/%23v0cls/" + VMAMBA_FILE  # moved there, 2024-08
VMAMBA_CLASSIFIER_KEYS = ("norm.weight", "norm.bias", "head.weight", "head.bias")  # not part of the encoder


# ---------------------------------------------------------------- the file


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


# ---------------------------------------------------------------- its keys on the encoder


@dataclass(frozen=True)
class EncoderState:
    """What :func:`encoder_state_from_vmamba` makes of a checkpoint: ``state``, the encoder's
    tensors it fills (encoder keys); ``skipped``, checkpoint keys left out on purpose (the
    classifier, and the patch embedding where its shapes differ)."""

    state: dict[str, Tensor]
    skipped: tuple[str, ...]


def encoder_key(vmamba_key: str) -> str:
    """A VMamba key as :class:`VSSMEncoder` names it: ``layers.{i}.downsample.*`` -> ``downsamples.{i}.*``."""
    return re.sub(r"^layers\.(\d+)\.downsample\.", r"downsamples.\1.", vmamba_key)


def encoder_state_from_vmamba(weights: Mapping[str, Tensor], encoder: VSSMEncoder) -> EncoderState:
    """The tensors of VMamba's ImageNet ``weights`` (its checkpoint's "model") for ``encoder``,
    checked: every encoder tensor but the patch embedding's must be there with its shape, and
    every checkpoint key must map to one, else a ValueError lists what does not fit. The patch
    embedding is taken only where its shapes fit (Swin-UMamba's encoder embeds 48 stem channels
    with 2x2 patches; VMamba's, 3 RGB channels with 4x4 patches)."""
    expected = encoder.state_dict()
    patch_embed = {k: v for k, v in weights.items() if k.startswith("patch_embed.")}
    embed_fits = all(encoder_key(k) in expected and v.shape == expected[encoder_key(k)].shape
                     for k, v in patch_embed.items())
    skipped = [k for k in weights if k in VMAMBA_CLASSIFIER_KEYS or (k in patch_embed and not embed_fits)]
    state = {encoder_key(k): v for k, v in weights.items() if k not in skipped}
    unknown = sorted(k for k in state if k not in expected)
    wrong = sorted(f"{k} {tuple(v.shape)} (encoder: {tuple(expected[k].shape)})" for k, v in state.items()
                   if k in expected and v.shape != expected[k].shape)
    needed = {k for k in expected if not k.startswith("patch_embed.") or embed_fits}
    missing = sorted(needed - set(state))
    if unknown or wrong or missing:
        raise ValueError("this is not a VMamba-Tiny (v0) checkpoint for this encoder: "
                         + "; ".join(f"{what}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                                     for what, keys in (("keys the encoder lacks", unknown),
                                                        ("shapes that differ", wrong),
                                                        ("encoder tensors it lacks", missing)) if keys))
    return EncoderState(state, tuple(skipped))


# ---------------------------------------------------------------- checking a file, loading an encoder


def check_vmamba_file(path: str) -> str:
    """A report on the VMamba checkpoint at ``path``: its SHA-256, its tensor count, and what each
    Swin-UMamba encoder would take from it. A ValueError where an encoder tensor would be missing
    or misshapen (nothing is trained or loaded here)."""
    import torch

    from nnunetv2_segresmamba.networks.swin_umamba import SwinUMamba, SwinUMambaD
    from nnunetv2_segresmamba.networks.vmamba import VSSMEncoder

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


@dataclass(frozen=True)
class LoadedEncoder:
    """What :func:`load_vmamba_encoder` loaded: the file and its SHA-256 (hex), the encoder keys
    it filled and those left as initialised, and the checkpoint keys not used."""

    path: str
    sha256: str
    loaded: tuple[str, ...]
    kept: tuple[str, ...]
    skipped: tuple[str, ...]

    def summary(self) -> str:
        """One line for a training log."""
        return (f"VMamba ImageNet weights: {len(self.loaded)} of the encoder's {len(self.loaded) + len(self.kept)} "
                f"tensors from {self.path} (sha256 {self.sha256}); left as initialised: "
                f"{', '.join(self.kept) or 'none'}; not used: {', '.join(self.skipped) or 'none'}")


def load_vmamba_encoder(encoder: VSSMEncoder, path: str | None = None) -> LoadedEncoder:
    """Loads VMamba-Tiny's ImageNet weights from ``path`` (default: the file
    :data:`VMAMBA_WEIGHTS_VAR` names, :func:`vmamba_weights_path`) into ``encoder``, every tensor
    checked first (:func:`encoder_state_from_vmamba`: a ValueError before anything is loaded if
    one is missing or misshapen)."""
    path = vmamba_weights_path() if path is None else path
    fitted = encoder_state_from_vmamba(read_vmamba_weights(path), encoder)
    state = encoder.state_dict()
    encoder.load_state_dict({**state, **fitted.state}, strict=True)
    kept = set(state) - set(fitted.state)
    return LoadedEncoder(path, sha256_of(path), tuple(sorted(fitted.state)), tuple(sorted(kept)), fitted.skipped)
