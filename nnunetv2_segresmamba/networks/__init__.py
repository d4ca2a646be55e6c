"""Networks assembled from :mod:`nnunetv2_segresmamba.networks.blocks` and the ToM operator."""

from nnunetv2_segresmamba.networks.segmamba import SegMamba
from nnunetv2_segresmamba.networks.segresmamba import SegResMamba

__all__ = ["SegMamba", "SegResMamba"]
