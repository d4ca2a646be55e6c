"""Compiles every Triton kernel of the ToM for an NVIDIA architecture, without a GPU, with the
arguments ``triton_tom`` launches them with on CUDA, and prints ptxas's register and spill
counts as JSON: ``python -m tests.triton_compile 90``.

The arguments come from ``triton_tom``'s own launch builders, given tensors on torch's meta
device (shapes and dtypes, no data): the compiled signature is the launched one, named
groups included. Triton's interpreter compiles nothing, so this must run without
``TRITON_INTERPRET``; the tests start it as a subprocess (test_triton_tom.py).
"""

import json
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import mangle_type

from nnunetv2_segresmamba.operators import triton_tom
from nnunetv2_segresmamba.operators.triton_tom import Launch

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
# a stage-0 ToM of SegResMamba at 128^3 (L = 64^3, E = 96), with the layer's defaults N = 16, width 4
BATCH, DIRECTIONS, LENGTH, CHANNELS, STATES, WIDTH, NUM_SLICES = 1, 3, 64**3, 96, 16, 4, 64


def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def launches() -> list[Launch]:
    """Every kernel's launch as on CUDA, on meta tensors."""
    kernels = triton_tom.load_kernels()
    kinds = meta(DIRECTIONS, dtype=torch.int32)
    per_direction = meta(BATCH, DIRECTIONS, LENGTH, CHANNELS)
    conv = kernels.ConvTensors(x=meta(BATCH, LENGTH, CHANNELS), weight=meta(DIRECTIONS, WIDTH, CHANNELS),
                               bias=meta(DIRECTIONS, CHANNELS), kinds=kinds)
    conv_grads = kernels.ConvGrads(out=per_direction, pre=per_direction, weight=meta(1), bias=meta(1), x=meta(1))
    scan = kernels.ScanTensors(u=per_direction, delta=per_direction, A=meta(DIRECTIONS, STATES, CHANNELS),
                               B=meta(BATCH, DIRECTIONS, LENGTH, STATES), C=meta(BATCH, DIRECTIONS, LENGTH, STATES),
                               D=meta(DIRECTIONS, CHANNELS), delta_bias=meta(DIRECTIONS, CHANNELS), kinds=kinds)
    chunk_size = triton_tom.default_chunk_size(torch.device("cuda"))
    chunks = -(-LENGTH // chunk_size)
    entering = meta(BATCH, DIRECTIONS, chunks, STATES, CHANNELS)
    scan_grads = kernels.ScanGrads(y=meta(BATCH, LENGTH, CHANNELS), u=per_direction, delta=per_direction,
                                   A=meta(1), D=meta(1), B=scan.B, C=scan.C)
    return [
        triton_tom.conv_forward_launch(conv, per_direction, NUM_SLICES),
        *triton_tom.conv_backward_launches(conv, conv_grads, NUM_SLICES),
        triton_tom.scan_forward_launch(scan, kernels.ScanOutputs(y=scan_grads.y, entering=entering), NUM_SLICES,
                                       chunk_size, keep_states=True),
        triton_tom.scan_backward_launch(scan, entering, scan_grads, NUM_SLICES, chunk_size),
    ]


def source(launch: Launch) -> ASTSource:
    """The kernel of ``launch`` with its signature: each argument's Triton type (a NamedTuple of
    types for a named group) or "constexpr"."""
    kernel = getattr(triton_tom.load_kernels(), launch.kernel)
    unknown = set(launch.arguments) - {p.name for p in kernel.params} - {"num_warps"}
    if unknown:
        raise TypeError(f"{launch.kernel} has no parameter {sorted(unknown)}")
    constexprs = {p.name: launch.arguments[p.name] for p in kernel.params if p.is_constexpr}
    signature = {p.name: "constexpr" if p.is_constexpr else mangle_type(launch.arguments[p.name])
                 for p in kernel.params}
    return ASTSource(fn=kernel, signature=signature, constexprs=constexprs)


def compile_for(arch: int) -> dict:
    report = {}
    for launch in launches():
        compiled = triton.compile(source(launch), target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": launch.arguments["num_warps"]})
        with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
            ptx.write(compiled.asm["ptx"])
            ptx.flush()
            target = re.search(r"^\.target (\w+)", compiled.asm["ptx"], re.M).group(1)  # sm_90a for 90
            info = subprocess.run([PTXAS, f"-arch={target}", "-v", ptx.name, "-o", os.devnull],
                                  capture_output=True, text=True, check=True).stderr
        report[launch.kernel] = {"registers": int(re.search(r"Used (\d+) registers", info).group(1)),
                                 "spill_stores": int(re.search(r"(\d+) bytes spill stores", info).group(1)),
                                 "cubin_bytes": len(compiled.asm["cubin"])}
    return report


if __name__ == "__main__":
    print(json.dumps(compile_for(int(sys.argv[1]))))
