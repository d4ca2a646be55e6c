# Discovery shim: nnU-Net imports this file as a top-level module while it searches
# nnUNet_extTrainer. Keep it to absolute imports of the trainers.
from nnunetv2_segresmamba.discovery import check_entries
from nnunetv2_segresmamba.trainers import *  # noqa: F401,F403

check_entries()
