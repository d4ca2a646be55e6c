"""nnU-Net trainers. ``nnUNetv2_train -tr NAME`` finds every name in ``__all__``."""

from nnunetv2_segresmamba.trainers.segresmamba import (
    nnUNetTrainerSegResMamba,
    nnUNetTrainerSegResMamba_2epochs,
    nnUNetTrainerSegResMamba_smoke,
)

__all__ = [
    "nnUNetTrainerSegResMamba",
    "nnUNetTrainerSegResMamba_2epochs",
    "nnUNetTrainerSegResMamba_smoke",
]
