"""Compiles every Triton kernel of the ToM for an NVIDIA architecture, without a GPU, with the
compile-time arguments ``triton_tom`` launches them with on CUDA, and prints ptxas's register
and spill counts as JSON: ``python -m tests.triton_compile 90``.

Triton's interpreter compiles nothing, so this must run without ``TRITON_INTERPRET``; the
tests start it as a subprocess (test_triton_tom.py).
"""

import inspect
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

from nnunetv2_segresmamba.operators import triton_kernels, triton_tom

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def signature(kernel, constexprs: dict) -> dict:
    """fp32 pointers (int32 for the direction kinds), int32 sizes, and the constexprs."""
    def kind(name):
        if name in constexprs:
            return "constexpr"
        if name.endswith("_ptr"):
            return "*i32" if name == "kinds_ptr" else "*fp32"
        return "i32"

    return {name: kind(name) for name in inspect.signature(kernel.fn).parameters}


def cases() -> dict:
    cuda = torch.device("cuda")
    scan = triton_tom.scan_meta(triton_tom.CHUNK_SIZE, states=16, device=cuda)
    conv = triton_tom.conv_meta(width=4)
    return {
        "conv_forward": (triton_kernels.conv_forward, conv),
        "conv_backward_weights": (triton_kernels.conv_backward_weights, conv),
        "conv_backward_input": (triton_kernels.conv_backward_input, conv),
        "scan_forward": (triton_kernels.scan_forward, {**scan, "KEEP_STATES": True}),
        "scan_backward": (triton_kernels.scan_backward, scan),
    }


def compile_for(arch: int) -> dict:
    report = {}
    for name, (kernel, meta) in cases().items():
        constexprs = {k: v for k, v in meta.items() if k != "num_warps"}
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature(kernel, constexprs), constexprs=constexprs),
                                  target=GPUTarget("cuda", arch, 32), options={"num_warps": meta["num_warps"]})
        with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
            ptx.write(compiled.asm["ptx"])
            ptx.flush()
            target = re.search(r"^\.target (\w+)", compiled.asm["ptx"], re.M).group(1)  # sm_90a for 90
            info = subprocess.run([PTXAS, f"-arch={target}", "-v", ptx.name, "-o", os.devnull],
                                  capture_output=True, text=True, check=True).stderr
        report[name] = {"registers": int(re.search(r"Used (\d+) registers", info).group(1)),
                        "spill_stores": int(re.search(r"(\d+) bytes spill stores", info).group(1)),
                        "cubin_bytes": len(compiled.asm["cubin"])}
    return report


if __name__ == "__main__":
    print(json.dumps(compile_for(int(sys.argv[1]))))
