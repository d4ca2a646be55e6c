"""Parameters and fvcore-style MACs of the comparison family at a patch size.

fvcore-style: one per multiply-accumulate of convolutions (transposed too), matrix products
and einsums (``torch.utils.flop_counter`` counts them at the aten level, FLOPs = 2 MACs);
norms, activations, softmax, upsampling and additions are not counted. The selective scan
adds its state update, one MAC per (position, channel, state) and direction, which is
elementwise and so not seen by the counter; its output contraction is an einsum and is
counted on the pure path. The fused numba and Triton kernels and mamba_ssm's run the depthwise
conv and the output contraction out of the counter's sight too; where a ToM layer runs one of
them, both are added as the pure path counts them, so that the count is the same whatever path
the machine takes (and the pure path's slow CPU scan is not needed to count). This holds for
every ToM layer: SegResMamba's, SegMamba's and U-Mamba's, whose sequence may be the channels.
Swin-UMamba's SS2D layers are counted the same way: four scans' state updates, and on a fused
path (or mamba_ssm's) their contraction; their depthwise conv2d and projections are torch ops,
seen on every path. Networks are run on the ``meta`` device where they allow it, else on the
CPU. Patches are 2D or 3D. Usage::

    python -m benchmarks.model_cost --size 128 128 128 --in-channels 1 --classes 14 --networks all
    python -m benchmarks.model_cost --size 256 256 --networks all    # the members that build 2D networks
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.machine import describe
from nnunetv2_segresmamba.operators.backends import resolve_path
from nnunetv2_segresmamba.operators.ss2d import SCANS, SS2D
from nnunetv2_segresmamba.operators.tom import TriOrientedMamba
from nnunetv2_segresmamba.registry import FAMILY, Member

PATCH_DIMS = (2, 3)  # the patches the benchmarks take: 2D (H, W) or 3D (D, H, W)


def count(member: Member, in_channels: int, classes: int, size: list[int]) -> dict:
    """Parameters and MACs of ``member``'s network for one (1, in_channels, *size) input; raises
    ValueError where the network does not take ``size`` (see :meth:`Member.build`)."""
    for device in ("meta", "cpu"):
        try:
            return _count_on(device, member, in_channels, classes, size)
        except (RuntimeError, NotImplementedError):
            if device == "cpu":
                raise
    raise AssertionError("unreachable")


def count_row(member: Member, in_channels: int, classes: int, size: list[int]) -> dict:
    """:func:`count`, or ``{"network", "error"}`` where the network does not build or run at ``size``."""
    try:
        return count(member, in_channels, classes, size)
    except (RuntimeError, ValueError) as err:
        return {"network": member.network, "error": f"{type(err).__name__}: {err}"}


def _count_on(device: str, member: Member, in_channels: int, classes: int, size: list[int]) -> dict:
    start = time.perf_counter()
    with torch.device(device):
        torch.manual_seed(0)
        net = member.build(in_channels, classes, size).eval()
        x = torch.randn(1, in_channels, *size)
    scan_updates = _count_scan_updates(net)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    macs = counter.get_total_flops() // 2 + scan_updates["updates"] + scan_updates["hidden"]
    return {
        "network": member.network, "params": sum(p.numel() for p in net.parameters()), "macs": macs,
        "scan_state_update_macs": scan_updates["updates"], "counted_on": device,
        "seconds": round(time.perf_counter() - start, 1),
        "paper_fvcore_flops_g": member.paper.fvcore_macs_g if member.paper else None,  # None: ablations
    }


def _count_scan_updates(net: nn.Module) -> dict:
    """MACs of the scan layers (ToM and SS2D) that the counter does not see, summed over their
    forward calls: the state updates (``updates``), and (``hidden``) what the layers that ran a
    fused path or mamba_ssm's kernels computed out of the counter's sight (see :data:`UNSEEN`)."""
    total = {"updates": 0, "hidden": 0}

    def hook(module: nn.Module, inputs, output):
        unseen = next(f for kind, f in UNSEEN.items() if isinstance(module, kind))
        updates, hidden = unseen(module, inputs[0])
        total["updates"] += updates
        total["hidden"] += hidden

    for module in net.modules():
        if isinstance(module, tuple(UNSEEN)):
            module.register_forward_hook(hook)
    return total


def _tom_unseen(module: TriOrientedMamba, x: torch.Tensor) -> tuple[int, int]:
    """(state updates, hidden MACs) of one ToM call on x (B, L, D); L is the channels in a U-Mamba
    channel-token layer."""
    batch, length, _ = x.shape
    directions, inner = len(module.directions), module.d_inner
    updates = directions * batch * length * inner * module.d_state
    if resolve_path(module.backend, x, module.d_state, module.d_conv) == "pure":
        return updates, 0
    # as the pure path counts them: its conv1d over the sequence and its causal padding, its einsum
    conv = directions * batch * (length + module.d_conv - 1) * inner * module.d_conv
    return updates, conv + updates  # the contraction takes one MAC per state update


def _ss2d_unseen(module: SS2D, x: torch.Tensor) -> tuple[int, int]:
    """(state updates, hidden MACs) of one SS2D call on x (B, H, W, C): four scans over H W
    positions; off the pure path their contraction (the pure scan's einsum) is hidden too."""
    batch, height, width, _ = x.shape
    updates = SCANS * batch * height * width * module.d_inner * module.d_state
    hidden = 0 if resolve_path(module.backend, x, module.d_state) == "pure" else updates
    return updates, hidden


UNSEEN = {TriOrientedMamba: _tom_unseen, SS2D: _ss2d_unseen}  # layer type -> (module, input) -> MACs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs="+", default=[128, 128, 128], help="2 or 3 values")
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--networks", nargs="+", default=["all"],
                        help=f"'all' or some of {[m.network for m in FAMILY]}")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if len(args.size) not in PATCH_DIMS:
        parser.error(f"--size takes 2 values (a 2D patch) or 3 (a 3D patch), got {args.size}")
    chosen = [m for m in FAMILY if m.network in args.networks
              or ("all" in args.networks and len(args.size) in m.spatial_dims)]
    rows = []
    for member in chosen:
        row = count_row(member, args.in_channels, args.classes, args.size)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": describe(), "size": args.size, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
