"""Networks assembled from :mod:`nnunetv2_segresmamba.networks.blocks` and the ToM operator."""

from nnunetv2_segresmamba.networks.segmamba import SegMamba
from nnunetv2_segresmamba.networks.segresmamba import SegResMamba
from nnunetv2_segresmamba.networks.umamba import UMambaBot, UMambaEnc

__all__ = ["SegMamba", "SegResMamba", "UMambaBot", "UMambaEnc"]
