"""Operators: the selective scan (``operators.selective_scan``), the scan directions
(``operators.directions``, import-light) and the Tri-orientated Mamba (ToM) layer shared by
every network. The layers are imported on first use, so that ``operators.directions`` loads
without torch."""

from __future__ import annotations

__all__ = ["MambaLayer", "TriOrientedMamba"]


def __getattr__(name: str):
    if name in __all__:
        from nnunetv2_segresmamba.operators import tom

        return getattr(tom, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
