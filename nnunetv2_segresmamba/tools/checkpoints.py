"""Checkpoint files: reading one with an error that names it and says what to do when it is
truncated or corrupt. Import-light: the discovery hook uses it in every ``nnUNetv2_predict``."""

from __future__ import annotations

import os
import pickle
import zipfile


def is_unreadable(error: BaseException) -> bool:
    """Whether ``error`` is what ``torch.load`` raises for a truncated or corrupt file."""
    return isinstance(error, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile)) or (
        isinstance(error, RuntimeError) and "PytorchStreamReader" in str(error))


def unreadable_checkpoint_error(path: str, error: BaseException) -> RuntimeError:
    """The error for a checkpoint file that cannot be read, saying what to do."""
    folder = os.path.dirname(path)
    return RuntimeError(
        f"{path} is not a readable checkpoint (truncated or corrupt: {type(error).__name__}: {error}). Nothing was "
        f"changed. Move it aside, e.g. mv {path} {path}.corrupt: nnUNetv2_train --c then resumes from the next "
        f"checkpoint it finds in {folder} (checkpoint_final, checkpoint_latest, checkpoint_best, in that order) "
        "or starts over, and nnUNetv2_predict -chk picks another checkpoint."
    )


# What a run trained before SegResMamba's output layer was renamed (head -> head.seg_layers, commit
# 44e77dd) holds: the old output layer's keys and the architecture inside the weights (_extra_state);
# its plans.json has SegResMamba's architecture where nnU-Net 2.8 reads the U-Net's (no 'strides').
PRE_RENAME_WEIGHTS = ("head.weight", "_extra_state")
PRE_RENAME_NETWORK_CLASS = "nnunetv2_segresmamba.networks.segresmamba.SegResMamba"


def is_pre_rename(checkpoint: dict) -> bool:
    """Whether ``checkpoint`` (an nnU-Net checkpoint dict) is a pre-rename SegResMamba run's."""
    weights = checkpoint.get("network_weights")
    return isinstance(weights, dict) and "architecture" not in checkpoint and all(k in weights
                                                                                  for k in PRE_RENAME_WEIGHTS)


def pre_rename_error(where: str) -> RuntimeError:
    """The error for a run trained before SegResMamba's output layer was renamed: what it is and what
    to do. ``where``: the checkpoint file or plans that show it."""
    return RuntimeError(
        f"{where} belongs to a SegResMamba run trained with an earlier nnunetv2_segresmamba (before commit 44e77dd, "
        "1 Dec 2026), whose output layer was called 'head' (now 'head.seg_layers'), whose weights carried the "
        "architecture ('_extra_state') and whose plans.json put SegResMamba's architecture where nnU-Net 2.8 reads "
        "the U-Net's (so nnU-Net finds no 'strides'). This version cannot load such a run; nothing was loaded or "
        "changed. Train it again with this version (nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER, in a "
        "new results folder or after moving the old run aside), or predict with the version that trained it "
        "(pip install the nnunetv2_segresmamba commit it was trained with, in another environment)."
    )


def load_checkpoint_file(path: str, map_location, mmap: bool = False) -> dict:
    """``torch.load`` of an nnU-Net checkpoint (``mmap``: tensors read when first used);
    :func:`unreadable_checkpoint_error` if it cannot be read, :func:`pre_rename_error` if it is a
    run's from before SegResMamba's output layer was renamed."""
    import torch

    if not zipfile.is_zipfile(path):  # torch would try its legacy format and fail less clearly
        raise unreadable_checkpoint_error(path, zipfile.BadZipFile("not a zip archive"))
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as error:
        if is_unreadable(error):
            raise unreadable_checkpoint_error(path, error) from error
        raise
    if isinstance(checkpoint, dict) and is_pre_rename(checkpoint):
        raise pre_rename_error(path)
    return checkpoint
