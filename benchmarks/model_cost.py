"""Parameters and fvcore-style MACs of SegResMamba at a patch size (default 128^3, 1 -> 14).

fvcore-style: one per multiply-accumulate of convolutions, transposed convolutions and
linear layers; norms, activations, upsampling and additions are not counted. Inside each
ToM direction: the causal conv1d (L * E * k), the dt projection (L * E * R) and the
selective scan, 2 * L * E * N (the state update and the output contraction). Usage::

    python -m benchmarks.model_cost --size 128 128 128 --in-channels 1 --classes 14
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn as nn

from benchmarks.machine import describe
from nnunetv2_segresmamba.networks import SegResMamba
from nnunetv2_segresmamba.operators.tom import TriOrientedMamba

PAPER = {"params_M": 119.98, "fvcore_flops_G": 188.42, "macs_G": 336.45}


def count_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """MACs per kind of layer for one forward of ``x``."""
    counts = {"conv": 0, "conv_transpose": 0, "linear": 0, "tom_conv1d_dt": 0, "scan": 0}

    def conv_hook(kind):
        def hook(module, inputs, output):
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            if kind == "conv_transpose":  # each input voxel meets every kernel tap once
                counts[kind] += inputs[0].numel() * module.out_channels * math.prod(module.kernel_size)
            else:
                counts[kind] += output.numel() * per_output
        return hook

    def linear_hook(module, inputs, output):
        counts["linear"] += output.numel() * module.in_features

    def tom_hook(module, inputs, output):  # in_proj/x_proj/out_proj are counted as Linear
        tokens_x_width = inputs[0].shape[0] * inputs[0].shape[1] * module.d_inner
        counts["tom_conv1d_dt"] += 3 * tokens_x_width * (module.d_conv + module.dt_rank)
        counts["scan"] += 3 * 2 * tokens_x_width * module.d_state

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            handles.append(module.register_forward_hook(conv_hook("conv")))
        elif isinstance(module, nn.ConvTranspose3d):
            handles.append(module.register_forward_hook(conv_hook("conv_transpose")))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, TriOrientedMamba):
            handles.append(module.register_forward_hook(tom_hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=[128, 128, 128])
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = SegResMamba(args.in_channels, args.classes).eval()
    start = time.perf_counter()
    counts = count_macs(model, torch.randn(1, args.in_channels, *args.size))
    result = {
        "machine": describe(),
        "size": args.size,
        "params": sum(p.numel() for p in model.parameters()),
        "macs": sum(counts.values()),
        "macs_by_kind": counts,
        "cpu_forward_s": round(time.perf_counter() - start, 1),
        "paper_table7_and_1": PAPER,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
