"""Makes ``nnUNetv2_train/predict -tr nnUNetTrainerSegResMamba`` work right after install.

nnU-Net 2.8 looks for trainers in its own folder, then in every folder listed in the
environment variable ``nnUNet_extTrainer``. The wheel installs ``nnunetv2_segresmamba.pth``
into site-packages; Python runs it at start-up and it calls :func:`activate`, which appends
our shim folder to ``nnUNet_extTrainer`` (keeping the user's own entries first). The shim
folder holds one light module that imports our trainers with absolute imports.

Manual fallback (e.g. where .pth files are disabled with ``python -S``)::

    export nnUNet_extTrainer="$(nnunetv2_segresmamba trainer-dir)"

In ``nnUNetv2_predict`` processes only, :func:`activate` also adds to Python's report of an
uncaught error the one thing nnU-Net's does not say when a checkpoint cannot be read (nnU-Net
loads checkpoints before any trainer code runs): which file it is and what to do
(:func:`explain_unreadable_checkpoint`).

Opt out with ``NNUNETV2_SEGRESMAMBA_NO_AUTO_DISCOVERY=1``. Must stay import-light: this
module runs in every Python process of the environment.
"""

from __future__ import annotations

import os
import sys

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
    """Appends our trainer folder to ``nnUNet_extTrainer`` in this process's environment. Called
    twice in one process (a venv whose site-packages Python lists twice, as lib and lib64, runs
    our .pth twice), it changes nothing more: the checkpoint advice is printed once."""
    if os.environ.get(OPT_OUT_VAR, "").lower() in ("1", "true", "yes"):
        return
    os.environ[ENV_VAR] = with_trainer_dir(os.environ.get(ENV_VAR))
    explaining = getattr(sys.excepthook, "explains_checkpoints", False)  # a second call (site-packages twice)
    if sys.argv and os.path.basename(sys.argv[0]).startswith("nnUNetv2_predict") and not explaining:
        previous = sys.excepthook

        def excepthook(kind, error, traceback) -> None:
            previous(kind, error, traceback)
            explain_unreadable_checkpoint(error, traceback)

        excepthook.explains_checkpoints = True
        sys.excepthook = excepthook


def explain_unreadable_checkpoint(error: BaseException, traceback) -> None:
    """If ``error`` is nnU-Net's predictor failing to read a checkpoint, prints to stderr which
    file it is and what to do (:func:`nnunetv2_segresmamba.tools.checkpoints.unreadable_checkpoint_error`)."""
    from nnunetv2_segresmamba.tools.checkpoints import is_unreadable, unreadable_checkpoint_error

    unreadable = is_unreadable(error)
    while traceback is not None and unreadable:
        frame = traceback.tb_frame
        names = frame.f_locals
        if frame.f_code.co_name == "initialize_from_trained_model_folder" and "checkpoint_name" in names:
            path = os.path.join(names["model_training_output_dir"], f"fold_{names['f']}", names["checkpoint_name"])
            print(f"\n{unreadable_checkpoint_error(path, error)}", file=sys.stderr)
            return
        traceback = traceback.tb_next


def check_entries(value: str | None = None) -> None:
    """Raises a FileNotFoundError naming ``nnUNet_extTrainer`` if it lists a folder that does not
    exist. nnU-Net skips such entries silently, so a trainer kept in a mistyped folder would only
    be reported as not found. Called by the shim, which nnU-Net imports when it searches for a
    trainer, at ``nnUNetv2_train`` and ``nnUNetv2_predict``."""
    value = os.environ.get(ENV_VAR, "") if value is None else value
    missing = [e for e in value.split(os.pathsep) if e.strip() and not os.path.isdir(e)]
    if missing:
        kept = os.pathsep.join(e for e in value.split(os.pathsep) if e.strip() and e not in missing)
        raise FileNotFoundError(
            f"The environment variable {ENV_VAR} lists {', '.join(map(repr, missing))}, which "
            f"{'is not a folder' if len(missing) == 1 else 'are not folders'}; nnU-Net would skip "
            f"{'it' if len(missing) == 1 else 'them'} and not find the trainers kept there. Correct or remove "
            f"{'that entry' if len(missing) == 1 else 'those entries'}, e.g. export {ENV_VAR}=\"{kept}\""
        )
