"""Time and peak memory of the ToM layer and of the bare selective scan.

Each measurement runs in a fresh child process so peaks do not mix:

- ``tom``: our full ToM layer (3 directions, in/out projections), forward and forward+backward.
- ``scan``: one selective scan of width E = 2 * d_model, N = 16; ``pure`` is ours,
  ``mambapy`` is mambapy's parallel scan (``pip install mambapy``), ``cuda`` is mamba_ssm's
  kernel when it loads.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the rise of the process's
peak resident set size (``ru_maxrss``) over its size just before the measured call, so it
covers every allocation the call makes, PyTorch's and the allocator's slack included.
Times are medians over ``--repeats`` runs after one warm-up. Usage::

    python -m benchmarks.scan_operator --lengths 32768 --d-models 96 --kinds tom scan
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import time

import torch

from benchmarks.machine import describe

D_STATE = 16


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _make_call(kind: str, backend: str, length: int, d_model: int, device: str, backward: bool):
    torch.manual_seed(0)
    if kind == "tom":
        from nnunetv2_segresmamba.operators.tom import TriOrientedMamba

        layer = TriOrientedMamba(d_model, backend="pure" if backend == "pure" else "cuda").to(device)
        x = torch.randn(1, length, d_model, device=device, requires_grad=backward)
        depth = round(length ** (1 / 3))  # a cube of side `depth` when L is a cube
        slices = depth if length % depth == 0 else 1
        return lambda: layer(x, num_slices=slices)
    d_inner = 2 * d_model
    u, delta = (torch.randn(1, d_inner, length, device=device, requires_grad=backward) for _ in range(2))
    A = (-torch.rand(d_inner, D_STATE, device=device)).requires_grad_(backward)
    B, C = (torch.randn(1, D_STATE, length, device=device, requires_grad=backward) for _ in range(2))
    D = torch.ones(d_inner, device=device, requires_grad=backward)
    if backend == "mambapy":
        from mambapy.mamba import MambaBlock, MambaConfig

        block = MambaBlock(MambaConfig(d_model=d_model, n_layers=1, d_state=D_STATE))
        sp = torch.nn.functional.softplus
        return lambda: block.selective_scan(u.transpose(1, 2), sp(delta.transpose(1, 2)), A,
                                            B.transpose(1, 2), C.transpose(1, 2), D)
    if backend == "cuda":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as scan
    else:
        from nnunetv2_segresmamba.operators.selective_scan import selective_scan as scan
    return lambda: scan(u, delta, A, B, C, D, delta_softplus=True)


def _measure(kind, backend, length, d_model, device, backward, repeats, queue):
    try:
        call = _make_call(kind, backend, length, d_model, device, backward)

        def step():
            with torch.set_grad_enabled(backward):
                out = call()
                if backward:
                    out.float().sum().backward()
            if device == "cuda":
                torch.cuda.synchronize()

        step()  # warm-up
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _rss_bytes()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        queue.put({"median_s": statistics.median(times), "peak_mib": max(peak, 0) / 2**20})
    except Exception as err:  # reported, not raised: one missing backend must not stop the table
        queue.put({"error": f"{type(err).__name__}: {err}"})


def measure(kind: str, backend: str, length: int, d_model: int, device: str, backward: bool, repeats: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(kind, backend, length, d_model, device, backward, repeats, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return {"kind": kind, "backend": backend, "L": length, "d_model": d_model,
            "pass": "fwd+bwd" if backward else "fwd", **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768])
    parser.add_argument("--d-models", type=int, nargs="+", default=[96])
    parser.add_argument("--kinds", nargs="+", default=["tom", "scan"], choices=["tom", "scan"])
    parser.add_argument("--backends", nargs="+", default=["pure", "mambapy"], choices=["pure", "mambapy", "cuda"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    rows = []
    for kind in args.kinds:
        for backend in (["pure", "cuda"] if kind == "tom" else args.backends):
            if (backend == "cuda") != (args.device == "cuda") and backend != "mambapy":
                continue
            for length in args.lengths:
                for d_model in args.d_models:
                    for backward in (False, True):
                        row = measure(kind, backend, length, d_model, args.device, backward, args.repeats)
                        print(json.dumps(row), flush=True)
                        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": describe(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
