"""nnU-Net trainers. ``nnUNetv2_train -tr NAME`` finds every name in ``__all__``."""

from nnunetv2_segresmamba.trainers.baselines import (
    nnUNetTrainerComparisonNnUNet,
    nnUNetTrainerComparisonNnUNet_2epochs,
    nnUNetTrainerComparisonNnUNet_smoke,
    nnUNetTrainerSegMamba,
    nnUNetTrainerSegMamba_2epochs,
    nnUNetTrainerSegMamba_smoke,
    nnUNetTrainerSwinUNETR,
    nnUNetTrainerSwinUNETR_2epochs,
    nnUNetTrainerSwinUNETR_smoke,
    nnUNetTrainerUNETR,
    nnUNetTrainerUNETR_2epochs,
    nnUNetTrainerUNETR_smoke,
)
from nnunetv2_segresmamba.trainers.segresmamba import (
    nnUNetTrainerSegResMamba,
    nnUNetTrainerSegResMamba_2epochs,
    nnUNetTrainerSegResMamba_smoke,
)

__all__ = [
    "nnUNetTrainerComparisonNnUNet",
    "nnUNetTrainerComparisonNnUNet_2epochs",
    "nnUNetTrainerComparisonNnUNet_smoke",
    "nnUNetTrainerSegMamba",
    "nnUNetTrainerSegMamba_2epochs",
    "nnUNetTrainerSegMamba_smoke",
    "nnUNetTrainerSegResMamba",
    "nnUNetTrainerSegResMamba_2epochs",
    "nnUNetTrainerSegResMamba_smoke",
    "nnUNetTrainerSwinUNETR",
    "nnUNetTrainerSwinUNETR_2epochs",
    "nnUNetTrainerSwinUNETR_smoke",
    "nnUNetTrainerUNETR",
    "nnUNetTrainerUNETR_2epochs",
    "nnUNetTrainerUNETR_smoke",
]
