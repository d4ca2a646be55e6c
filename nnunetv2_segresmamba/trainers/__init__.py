"""nnU-Net trainers, one module per family (``baselines``, ``segresmamba``, ``swin_umamba``,
``umamba``). ``nnUNetv2_train -tr NAME`` finds every name in ``__all__``: the classes those
modules define whose names start with ``nnUNetTrainer`` (nnU-Net's trainer names; recipes and
mixins are named otherwise), gathered here so that no trainer is listed twice. Importing them makes ``nnUNetv2_train
-pretrained_weights`` leave out the output layers of our networks (:mod:`.fine_tuning`)."""

from __future__ import annotations

from types import ModuleType

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_segresmamba.trainers import baselines, segresmamba, swin_umamba, umamba
from nnunetv2_segresmamba.trainers.fine_tuning import install

TRAINER_PREFIX = "nnUNetTrainer"


def trainers_of(module: ModuleType) -> dict[str, type[nnUNetTrainer]]:
    """The trainers ``module`` defines (not those it imports), by name."""
    return {name: value for name, value in vars(module).items()
            if name.startswith(TRAINER_PREFIX) and isinstance(value, type) and issubclass(value, nnUNetTrainer)
            and value.__module__ == module.__name__}


_TRAINERS = {name: cls for module in (baselines, segresmamba, swin_umamba, umamba)
             for name, cls in trainers_of(module).items()}
globals().update(_TRAINERS)
__all__ = sorted(_TRAINERS)

install()  # nnU-Net imports this package in nnUNetv2_train when it looks the trainer up
