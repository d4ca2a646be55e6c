"""Operators: the selective scan (``operators.selective_scan``) and the Tri-orientated Mamba
(ToM) layer shared by every network."""

from nnunetv2_segresmamba.operators.tom import MambaLayer, TriOrientedMamba

__all__ = ["MambaLayer", "TriOrientedMamba"]
