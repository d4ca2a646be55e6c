"""Networks assembled from :mod:`nnunetv2_segresmamba.networks.blocks` and the ToM operator. The
networks are imported on first use (``from nnunetv2_segresmamba.networks import SegResMamba``),
so that ``networks.planning`` loads without torch: the registry reads it."""

from __future__ import annotations

__all__ = ["SegMamba", "SegResMamba", "UMambaBot", "UMambaEnc"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from nnunetv2_segresmamba.networks import segmamba, segresmamba, umamba

    return next(getattr(module, name) for module in (segmamba, segresmamba, umamba) if hasattr(module, name))
