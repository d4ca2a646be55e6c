"""Makes ``nnUNetv2_train/predict -tr nnUNetTrainerSegResMamba`` work right after install.

nnU-Net 2.8 looks for trainers in its own folder, then in every folder listed in the
environment variable ``nnUNet_extTrainer``. The wheel installs ``nnunetv2_segresmamba.pth``
into site-packages; Python runs it at start-up and it calls :func:`activate`, which appends
our shim folder to ``nnUNet_extTrainer`` (keeping the user's own entries first). The shim
folder holds one light module that imports our trainers with absolute imports.

Manual fallback (e.g. where .pth files are disabled with ``python -S``)::

    export nnUNet_extTrainer="$(nnunetv2_segresmamba trainer-dir)"

Opt out with ``NNUNETV2_SEGRESMAMBA_NO_AUTO_DISCOVERY=1``. Must stay import-light: this
module runs in every Python process of the environment.
"""

from __future__ import annotations

import os

ENV_VAR = "nnUNet_extTrainer"
OPT_OUT_VAR = "NNUNETV2_SEGRESMAMBA_NO_AUTO_DISCOVERY"


def trainer_dir() -> str:
    """The folder to list in ``nnUNet_extTrainer``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext")


def with_trainer_dir(current: str | None) -> str:
    """``current`` (an os.pathsep list) with our folder appended once."""
    entries = [e for e in (current or "").split(os.pathsep) if e]
    ours = trainer_dir()
    if not any(os.path.normpath(e) == ours for e in entries):
        entries.append(ours)
    return os.pathsep.join(entries)


def activate() -> None:
    """Appends our trainer folder to ``nnUNet_extTrainer`` in this process's environment."""
    if os.environ.get(OPT_OUT_VAR, "").lower() in ("1", "true", "yes"):
        return
    os.environ[ENV_VAR] = with_trainer_dir(os.environ.get(ENV_VAR))
