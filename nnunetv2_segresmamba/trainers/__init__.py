"""nnU-Net trainers, one module per family (``baselines``, ``segresmamba``, ``swin_umamba``,
``umamba``). ``nnUNetv2_train -tr NAME`` finds every name in ``__all__``: the classes those
modules define whose names start with ``nnUNetTrainer`` (nnU-Net's trainer names; recipes and
mixins are named otherwise), gathered here so that no trainer is listed twice."""

from __future__ import annotations

from types import ModuleType

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_segresmamba.trainers import baselines, segresmamba, swin_umamba, umamba

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
