"""The optimizer's parameter groups: weight decay and its exemptions, GaLore's projected
weights, and torch's fused optimizers where they exist."""

from __future__ import annotations

import torch
import torch.nn as nn

from nnunetv2_segresmamba.optimizers.galore import as_matrix


def fused_if_available(optimizer_class: type[torch.optim.Optimizer], params: list[dict],
                       **kwargs) -> torch.optim.Optimizer:
    """``optimizer_class(params, fused=True, **kwargs)``: one kernel updates every parameter, not
    a Python loop over them (several times faster on a CPU); unfused where torch has no fused
    kernel for the parameters' device. The update is the same algorithm either way."""
    try:
        return optimizer_class(params, fused=True, **kwargs)
    except RuntimeError:  # "`fused=True` requires all the params to be ... of supported devices"
        return optimizer_class(params, **kwargs)


def parameter_groups(network: nn.Module, weight_decay: float, exempt_marked: bool = True) -> list[dict]:
    """Two optimizer groups: every parameter with ``weight_decay``, except those marked
    ``_no_weight_decay`` (the ToM's ``A_log``, ``D`` and their ``_b``/``_s`` twins, as in
    mamba_ssm), which get none unless ``exempt_marked`` is False. Norm weights and biases keep the
    recipe's weight decay: each recipe of the family (nnU-Net, MONAI's tutorials, SegMamba's
    script) decays them, and the comparison reproduces those recipes. The second group is left
    out when nothing is exempt."""
    decay, no_decay = [], []
    for parameter in network.parameters():
        if parameter.requires_grad:
            exempt = exempt_marked and getattr(parameter, "_no_weight_decay", False)
            (no_decay if exempt else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


PROJECTED_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def galore_groups(network: nn.Module, groups: list[dict], rank: int, update_proj_gap: int,
                  scale: float) -> list[dict]:
    """``groups`` (:func:`parameter_groups`) with the weights of ``network``'s Linear and conv
    layers split off into groups of their own, which GaLore projects (``rank``, ``update_proj_gap``,
    ``scale``), where their matrices (:func:`~nnunetv2_segresmamba.optimizers.galore.as_matrix`)
    have more than ``rank`` rows and columns (else a projection saves nothing); each keeps its
    group's weight decay."""
    projected_ids = {id(m.weight) for m in network.modules()
                     if isinstance(m, PROJECTED_MODULES) and min(as_matrix(m.weight).shape) > rank}
    split = []
    for group in groups:
        projected = [p for p in group["params"] if id(p) in projected_ids]
        rest = [p for p in group["params"] if id(p) not in projected_ids]
        galore = {"rank": rank, "update_proj_gap": update_proj_gap, "scale": scale}
        split += [{**group, "params": params, **extra} for params, extra in ((projected, galore), (rest, {}))
                  if params]
    return split
