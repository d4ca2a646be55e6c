"""Parameters and fvcore-style MACs of the comparison family at a patch size.

fvcore-style: one per multiply-accumulate of convolutions (transposed too), matrix products
and einsums (``torch.utils.flop_counter`` counts them at the aten level, FLOPs = 2 MACs);
norms, activations, softmax, upsampling and additions are not counted. The selective scan
adds its state update, one MAC per (position, channel, state) and direction, which is
elementwise and so not seen by the counter; its output contraction is an einsum and is
counted. Networks are run on the ``meta`` device where they allow it, else on the CPU.
Usage::

    python -m benchmarks.model_cost --size 128 128 128 --in-channels 1 --classes 14 --networks all
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.machine import describe
from nnunetv2_segresmamba.operators.tom import TriOrientedMamba
from nnunetv2_segresmamba.registry import FAMILY, Member


def count(member: Member, in_channels: int, classes: int, size: list[int]) -> dict:
    for device in ("meta", "cpu"):
        try:
            return _count_on(device, member, in_channels, classes, size)
        except (RuntimeError, NotImplementedError):
            if device == "cpu":
                raise
    raise AssertionError("unreachable")


def _count_on(device: str, member: Member, in_channels: int, classes: int, size: list[int]) -> dict:
    start = time.perf_counter()
    with torch.device(device):
        torch.manual_seed(0)
        net = member.build(in_channels, classes, size).eval()
        x = torch.randn(1, in_channels, *size)
    scan_updates = _count_scan_updates(net)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    macs = counter.get_total_flops() // 2 + scan_updates["macs"]
    return {
        "network": member.network, "params": sum(p.numel() for p in net.parameters()), "macs": macs,
        "scan_state_update_macs": scan_updates["macs"], "counted_on": device,
        "seconds": round(time.perf_counter() - start, 1),
        "paper_fvcore_flops_g": member.paper.fvcore_macs_g if member.paper else None,  # None: ablations
    }


def _count_scan_updates(net: nn.Module) -> dict:
    total = {"macs": 0}

    def hook(module: TriOrientedMamba, inputs, output):
        batch, length, _ = inputs[0].shape
        total["macs"] += len(module.directions) * batch * length * module.d_inner * module.d_state

    for module in net.modules():
        if isinstance(module, TriOrientedMamba):
            module.register_forward_hook(hook)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=[128, 128, 128])
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--networks", nargs="+", default=["all"],
                        help=f"'all' or some of {[m.network for m in FAMILY]}")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    chosen = [m for m in FAMILY if "all" in args.networks or m.network in args.networks]
    rows = []
    for member in chosen:
        row = count(member, args.in_channels, args.classes, args.size)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": describe(), "size": args.size, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
