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


def load_checkpoint_file(path: str, map_location, mmap: bool = False) -> dict:
    """``torch.load`` of an nnU-Net checkpoint (``mmap``: tensors read when first used);
    :func:`unreadable_checkpoint_error` if it cannot be read."""
    import torch

    if not zipfile.is_zipfile(path):  # torch would try its legacy format and fail less clearly
        raise unreadable_checkpoint_error(path, zipfile.BadZipFile("not a zip archive"))
    try:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as error:
        if is_unreadable(error):
            raise unreadable_checkpoint_error(path, error) from error
        raise
