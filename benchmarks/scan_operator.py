"""Time and peak memory of the ToM layer and of the bare selective scan.

- ``tom``: the full ToM layer (in_proj, three directions, out_proj) on a (1, L, d_model)
  input, with our ``numba`` (fused CPU kernels), ``triton`` (fused GPU kernels) or ``pure``
  path, ``cuda`` (mamba_ssm's kernels) or ``mambapy`` (mambapy's parallel scan,
  ``pip install mambapy``, in our layer).
- ``scan``: one selective scan of width E = 2 * d_model, N = 16, same backends.
- ``scan_denormal``: the same scan on inputs whose states and decays fall below fp32's
  smallest normal number (u, B scaled by 1e-21, A = -200); compare with ``scan``.

The scan's arithmetic limit, :func:`arithmetic_limit`, is its floating-point work at the
fp32 rate this machine reaches in a matrix product, measured in the same run.

Forward, and forward+backward of the sum. Peak memory is the rise during the measured calls
(inputs and weights excluded), see :mod:`benchmarks.isolate`. Usage::

    python -m benchmarks.scan_operator --kinds tom scan --lengths 32768 --d-models 96
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.isolate import PeakMemory, default_memory_cap_gib, run_isolated
from benchmarks.machine import describe
from benchmarks.network_step import median_time
from nnunetv2_segresmamba.operators.tom import FUSED_PATHS, TriOrientedMamba, fused_module

D_STATE = 16
BACKENDS = ("pure", "numba", "triton", "cuda", "mambapy")
KINDS = ("tom", "scan", "scan_denormal")
# fp32 operations per state update and direction, exp counted as one: forward a = exp(dt A),
# h = a h + (dt u) B, y += h C (7); backward recomputes the forward (7) and runs the adjoint
# G = a G + g C, dC, dB, du, d(dt), dA (20).
FLOPS_PER_UPDATE = {"fwd": 7, "fwd+bwd": 34}


def mambapy_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """mambapy's ``MambaBlock.selective_scan`` behind the ``selective_scan_fn`` signature (z None:
    ungated, as a ToM direction under checkpointing calls it)."""
    from mambapy.mamba import MambaBlock

    delta = delta + delta_bias[:, None]
    delta = F.softplus(delta) if delta_softplus else delta
    y = MambaBlock.selective_scan(None, u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2),
                                  C.transpose(1, 2), D)  # the method uses no state of its block
    y = y.transpose(1, 2)
    return y if z is None else y * F.silu(z)


def make_call(kind: str, backend: str, length: int, d_model: int, device: str, backward: bool,
              chunk_size: int | None = None) -> Callable:
    """The measured call; ``chunk_size`` (scan kinds, pure/numba/triton only) overrides the default."""
    torch.manual_seed(0)
    if kind == "tom":
        if backend == "mambapy":  # our layer (pure convolutions) with mambapy's scan in place of ours
            layer = TriOrientedMamba(d_model, backend="pure", scan_function=mambapy_selective_scan)
        else:
            layer = TriOrientedMamba(d_model, backend=backend)
        layer = layer.to(device)
        x = torch.randn(1, length, d_model, device=device, requires_grad=backward)
        side = round(length ** (1 / 3))
        return lambda: layer(x, num_slices=side if length % side == 0 else 1)  # cube volumes: slices = side
    d_inner = 2 * d_model
    u, delta, z = (torch.randn(1, d_inner, length, device=device) for _ in range(3))
    A = -torch.rand(d_inner, D_STATE, device=device)
    B, C = (torch.randn(1, D_STATE, length, device=device) for _ in range(2))
    if kind == "scan_denormal":
        u, B, A = u * 1e-21, B * 1e-21, torch.full_like(A, -200.0)
    D, bias = torch.ones(d_inner, device=device), torch.zeros(d_inner, device=device)
    for t in (u, delta, z, A, B, C, D):
        t.requires_grad_(backward)
    chunk = {} if chunk_size is None else {"chunk_size": chunk_size}
    if backend in FUSED_PATHS:
        return _fused_scan_call(backend, u, delta, A, B, C, D, z, bias, chunk)
    if backend == "mambapy":
        scan = mambapy_selective_scan
    elif backend == "cuda":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as scan
    else:
        from nnunetv2_segresmamba.operators.selective_scan import selective_scan as scan
    return lambda: scan(u, delta, A, B, C, D, z, delta_bias=bias, delta_softplus=True, **chunk)


def _fused_scan_call(backend, u, delta, A, B, C, D, z, bias, chunk: dict) -> Callable:
    """One direction of the fused numba or Triton scan, on the channels-last layout it reads."""
    fused_scan = fused_module(backend).fused_scan

    def channels_last(t):
        return t.detach().transpose(-1, -2).unsqueeze(1).contiguous().requires_grad_(t.requires_grad)

    u, delta, B, C = (channels_last(t) for t in (u, delta, B, C))  # (1, 1, L, E) and (1, 1, L, N)
    A = A.detach().t().unsqueeze(0).contiguous().requires_grad_(A.requires_grad)  # (1, N, E)
    z = z.detach().transpose(1, 2).contiguous().requires_grad_(z.requires_grad)
    D, bias = D.detach().unsqueeze(0).requires_grad_(D.requires_grad), bias.unsqueeze(0)
    return lambda: fused_scan(u, delta, A, B, C, D, bias, z, kinds=(0,), num_slices=1, **chunk)


def fp32_rate(device: str, size: int = 2048, repeats: int = 5) -> float:
    """fp32 operations per second of a (size x size) matrix product on ``device``: the
    machine's reachable arithmetic rate, with all its threads."""
    a = torch.randn(size, size, device=device)
    a @ a  # warm-up
    seconds = median_time(lambda: a @ a, device, repeats, warmup=0)
    return 2 * size**3 / seconds


def arithmetic_limit(length: int, d_model: int, pass_: str, rate: float) -> float:
    """Seconds one scan of width E = 2 d_model needs at ``rate`` (see FLOPS_PER_UPDATE)."""
    return FLOPS_PER_UPDATE[pass_] * length * 2 * d_model * D_STATE / rate


def measure_operator(kind: str, backend: str, length: int, d_model: int, device: str, backward: bool,
                     repeats: int) -> dict:
    """Runs in a child process; returns one result row's measurements."""
    call = make_call(kind, backend, length, d_model, device, backward)

    def step() -> None:
        with torch.set_grad_enabled(backward):
            out = call()
            if backward:
                out.float().sum().backward()

    memory = PeakMemory(device)
    step()  # warm-up before the memory mark, so lazily created buffers are not counted
    memory.reset()
    return {"median_s": median_time(step, device, repeats, warmup=0), "peak_mib": memory.mib()}


def operator_row(kind: str, backend: str, length: int, d_model: int, device: str, backward: bool,
                 repeats: int) -> dict:
    """One isolated measurement as a result row; an ``error`` key replaces the figures on failure."""
    cap = None if device == "cuda" else default_memory_cap_gib()
    result = run_isolated(measure_operator, kind, backend, length, d_model, device, backward, repeats,
                          memory_cap_gib=cap)
    return {"kind": kind, "backend": backend, "L": length, "d_model": d_model,
            "pass": "fwd+bwd" if backward else "fwd", **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768])
    parser.add_argument("--d-models", type=int, nargs="+", default=[96])
    parser.add_argument("--kinds", nargs="+", default=["tom", "scan"], choices=KINDS)
    parser.add_argument("--backends", nargs="+", default=["numba", "pure", "mambapy"], choices=BACKENDS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    rows = []
    for kind in args.kinds:
        for backend in args.backends:
            for length in args.lengths:
                for d_model in args.d_models:
                    for backward in (False, True):
                        row = operator_row(kind, backend, length, d_model, args.device, backward, args.repeats)
                        print(json.dumps(row), flush=True)
                        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": describe(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
