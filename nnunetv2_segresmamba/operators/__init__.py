"""Operators: the selective scan and the Tri-orientated Mamba (ToM) layer."""

from nnunetv2_segresmamba.operators.selective_scan import selective_scan
from nnunetv2_segresmamba.operators.tom import MambaLayer, TriOrientedMamba

__all__ = ["MambaLayer", "TriOrientedMamba", "selective_scan"]
