"""The fused ToM on the GPU with Triton: every direction's causal conv in one launch and every
direction's selective scan in one launch, forward and backward (``operators.triton_kernels``).

The twin of ``numba_tom``, with the same functions, layouts and semantics: tensors stay
channels-last and in sequence order, each direction reads its own order by index arithmetic
(no flipped or restacked copies), and the kernel sums the directions' outputs; the gate
silu(z), if any, multiplies that sum afterwards in torch.
Autograd keeps the inputs and the state entering every ``chunk_size`` steps; the backward
pass recomputes one chunk at a time, so no (B, E, L, N) tensor exists.

Triton ships with CUDA builds of torch, so this needs no compiler beyond the one Triton
brings. Under ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors, slowly: that is how
the tests check them on machines without a GPU.

The B and C gradients are summed over channel blocks with atomic adds, so on a GPU they may
differ between runs in the last bits; everything else is deterministic.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from nnunetv2_segresmamba.operators.directions import FORWARD, INTER_SLICE, KINDS, REVERSE

CHUNK_SIZE = 64  # steps per associative scan and between the states kept for the backward pass
# Triton's interpreter combines a scan's elements one by one, so its time grows with the
# padded tile: shorter chunks waste less on the short sequences of the deep stages.
INTERPRETER_CHUNK_SIZE = 16
# Channels per scan program. On a GPU one: a program walks the whole sequence, so batch x E
# programs are what fill the GPU at batch 1, and ptxas (sm_90) fits the backward without
# spills, where 4 channels spill (register and spill counts: python -m tests.triton_compile 90).
# Triton's CPU interpreter runs fewer, larger programs faster.
CUDA_BLOCK_E, INTERPRETER_BLOCK_E = 1, 4
CONV_BLOCK_L, CONV_BLOCK_E = 32, 32  # 64 steps spill in the weight-gradient kernel (tests.triton_compile)
NUM_WARPS = 4
TRITON_DEVICE_HINT = ("The Triton ToM runs on CUDA tensors; on the CPU only in Triton's interpreter, for tests "
                      "(TRITON_INTERPRET=1, set before triton is first imported).")


def triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernels run on ``device``: CUDA, or the CPU in Triton's interpreter."""
    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return device.type == "cuda" or (device.type == "cpu" and interpreting)


@functools.lru_cache(maxsize=1)
def load_kernels() -> ModuleType:
    """The Triton kernels (importing triton); an ImportError if triton does not load."""
    from nnunetv2_segresmamba.operators import triton_kernels

    return triton_kernels


class Launch(NamedTuple):
    """One kernel launch: the kernel's name in ``triton_kernels``, its grid, and every argument
    by keyword (tensors in the kernels' named groups, compile-time arguments included)."""

    kernel: str
    grid: tuple[int, ...]
    arguments: dict[str, Any]

    def run(self) -> None:
        getattr(load_kernels(), self.kernel)[self.grid](**self.arguments)


def _kinds(kinds: Sequence[int], device: torch.device) -> Tensor:
    """The kinds as a (K,) int32 tensor; a ValueError for one not in ``directions.KINDS``."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"direction kinds must be among operators.directions.KINDS {KINDS}, got {tuple(kinds)}")
    return torch.tensor(list(kinds), dtype=torch.int32, device=device)


def _check_layout(x: Tensor) -> None:
    if not triton_runs_on(x.device):
        raise RuntimeError(f"got a tensor on {x.device}. {TRITON_DEVICE_HINT}")
    if x.dtype != torch.float32 or x.stride(-1) != 1:
        raise ValueError(f"the Triton ToM takes fp32 tensors with contiguous channels, got {x.dtype} with strides "
                         f"{x.stride()}")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def conv_meta(width: int) -> dict:
    """The compile-time arguments of the conv kernels."""
    return {"WIDTH": width, "BLOCK_L": CONV_BLOCK_L, "BLOCK_E": CONV_BLOCK_E, "num_warps": NUM_WARPS}


def scan_meta(chunk_size: int, states: int, device: torch.device) -> dict:
    """The compile-time arguments of the scan kernels: INTERPRETER_BLOCK_E channels per program
    on the CPU (Triton's interpreter), else CUDA_BLOCK_E (which says why)."""
    return {"CHUNK": chunk_size, "BLOCK_E": INTERPRETER_BLOCK_E if device.type == "cpu" else CUDA_BLOCK_E,
            "BLOCK_N": 1 << max(0, math.ceil(math.log2(states))), "num_warps": NUM_WARPS}


# ---------------------------------------------------------------- the launches, for the autograd
# functions below and for the ahead-of-time compile of tests/triton_compile.py


def _conv_sizes(conv, num_slices: int):
    """``triton_kernels.ConvSizes`` of conv, a ``triton_kernels.ConvTensors``."""
    _, length, channels = conv.x.shape
    return load_kernels().ConvSizes(x_stride_b=conv.x.stride(0), x_stride_l=conv.x.stride(1), length=length,
                                    channels=channels, num_slices=num_slices, directions=conv.weight.shape[0])


def _conv_arguments(conv, num_slices: int) -> dict[str, Any]:
    return {"conv": conv, "sizes": _conv_sizes(conv, num_slices), **conv_meta(conv.weight.shape[1])}


def _conv_grid(conv) -> tuple[int, int, int]:
    """(B * K, L blocks, E blocks)."""
    batch, length, channels = conv.x.shape
    return batch * conv.weight.shape[0], _cdiv(length, CONV_BLOCK_L), _cdiv(channels, CONV_BLOCK_E)


def conv_forward_launch(conv, out: Tensor, num_slices: int) -> Launch:
    """conv: ``triton_kernels.ConvTensors``; out (B, K, L, E)."""
    return Launch("conv_forward", _conv_grid(conv), {**_conv_arguments(conv, num_slices), "out_ptr": out})


def conv_backward_launches(conv, grads, num_slices: int) -> tuple[Launch, Launch]:
    """The weight-gradient launch, then the input-gradient one; grads: ``triton_kernels.ConvGrads``."""
    grid, arguments = _conv_grid(conv), {**_conv_arguments(conv, num_slices), "grads": grads}
    return (Launch("conv_backward_weights", grid, arguments),
            Launch("conv_backward_input", (conv.x.shape[0], *grid[1:]), arguments))


def _scan_arguments(scan, num_slices: int, chunk_size: int) -> dict[str, Any]:
    """The sizes and compile-time arguments of scan, a ``triton_kernels.ScanTensors``."""
    _, directions, length, channels = scan.u.shape
    sizes = load_kernels().ScanSizes(length=length, channels=channels, states=scan.A.shape[1], num_slices=num_slices,
                                     directions=directions, chunks=_cdiv(length, chunk_size))
    return {"scan": scan, "sizes": sizes, **scan_meta(chunk_size, sizes.states, scan.u.device)}


def scan_forward_launch(scan, out, num_slices: int, chunk_size: int, keep_states: bool) -> Launch:
    """scan: ``triton_kernels.ScanTensors``; out: ``triton_kernels.ScanOutputs``."""
    arguments = {**_scan_arguments(scan, num_slices, chunk_size), "out": out, "KEEP_STATES": keep_states}
    return Launch("scan_forward", (scan.u.shape[0], _cdiv(scan.u.shape[3], arguments["BLOCK_E"])), arguments)


def scan_backward_launch(scan, entering: Tensor, grads, num_slices: int, chunk_size: int) -> Launch:
    """entering (B, K, chunks, N, E) from the forward; grads: ``triton_kernels.ScanGrads``."""
    arguments = {**_scan_arguments(scan, num_slices, chunk_size), "entering_ptr": entering, "grads": grads}
    batch, directions, _, channels = scan.u.shape
    return Launch("scan_backward", (batch, _cdiv(channels, arguments["BLOCK_E"]), directions), arguments)


# ---------------------------------------------------------------- autograd


class _DirectionalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, kinds, num_slices):
        conv = load_kernels().ConvTensors(x=x, weight=weight, bias=bias, kinds=_kinds(kinds, x.device))
        batch, length, channels = x.shape
        out = x.new_empty(batch, weight.shape[0], length, channels)
        conv_forward_launch(conv, out, num_slices).run()
        ctx.save_for_backward(*conv)
        ctx.num_slices = num_slices
        return out

    @staticmethod
    def backward(ctx, grad_out):
        kernels = load_kernels()
        conv = kernels.ConvTensors(*ctx.saved_tensors)
        batch, length, channels = conv.x.shape
        blocks = _cdiv(length, CONV_BLOCK_L)
        directions, width, _ = conv.weight.shape
        grads = kernels.ConvGrads(out=grad_out.contiguous(), pre=torch.empty_like(grad_out),
                                  weight=conv.x.new_empty(batch, blocks, directions, width, channels),
                                  bias=conv.x.new_empty(batch, blocks, directions, channels),
                                  x=conv.x.new_empty(batch, length, channels))
        for launch in conv_backward_launches(conv, grads, ctx.num_slices):
            launch.run()
        return grads.x, grads.weight.sum(dim=(0, 1)), grads.bias.sum(dim=(0, 1)), None, None


def directional_conv(x: Tensor, weight: Tensor, bias: Tensor, kinds: Sequence[int], num_slices: int) -> Tensor:
    """:func:`numba_tom.directional_conv` on the GPU: x (B, L, E) with contiguous channels,
    weight (K, W, E), bias (K, E) -> (B, K, L, E)."""
    _check_layout(x)
    return _DirectionalConv.apply(x, weight.contiguous(), bias.contiguous(), tuple(kinds), num_slices)


class _FusedScan(torch.autograd.Function):
    """The directions' scans summed, before the gate: (u, delta, A, B, C, D, bias) -> (B, L, E)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, kinds, num_slices, chunk_size, keep_states):
        kernels = load_kernels()
        scan = kernels.ScanTensors(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias,
                                   kinds=_kinds(kinds, u.device))
        batch, directions, length, channels = u.shape
        chunks = _cdiv(length, chunk_size) if keep_states else 0
        out = kernels.ScanOutputs(y=u.new_zeros(batch, length, channels),
                                  entering=u.new_empty(batch, directions, chunks, A.shape[1], channels))
        scan_forward_launch(scan, out, num_slices, chunk_size, keep_states).run()
        ctx.save_for_backward(*scan, out.entering)
        ctx.num_slices, ctx.chunk_size = num_slices, chunk_size
        return out.y

    @staticmethod
    def backward(ctx, grad_y):
        kernels = load_kernels()
        *saved, entering = ctx.saved_tensors
        scan = kernels.ScanTensors(*saved)
        batch = scan.u.shape[0]
        grads = kernels.ScanGrads(y=grad_y.contiguous(), u=torch.empty_like(scan.u), delta=torch.empty_like(scan.delta),
                                  A=scan.u.new_empty(batch, *scan.A.shape), D=scan.u.new_empty(batch, *scan.D.shape),
                                  B=torch.zeros_like(scan.B), C=torch.zeros_like(scan.C))
        scan_backward_launch(scan, entering, grads, ctx.num_slices, ctx.chunk_size).run()
        return (grads.u, grads.delta, grads.A.sum(0), grads.B, grads.C, grads.D.sum(0), grads.delta.sum(dim=(0, 2)),
                None, None, None, None)


def default_chunk_size(device: torch.device) -> int:
    """The chunk size :func:`fused_scan` uses on ``device`` unless told otherwise."""
    return INTERPRETER_CHUNK_SIZE if device.type == "cpu" else CHUNK_SIZE


def fused_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    z: Tensor | None,
    kinds: Sequence[int],
    num_slices: int,
    chunk_size: int | None = None,
) -> Tensor:
    """:func:`numba_tom.fused_scan` on the GPU: the K directions' scans, summed, then gated once (unless z is None).
    u, delta (B, K, L, E); A (K, N, E); B, C (B, K, L, N); D, delta_bias (K, E); z (B, L, E),
    or None for no gate -> (B, L, E). ``chunk_size`` (a power of two) is the steps per
    associative scan; None: CHUNK_SIZE on a GPU, INTERPRETER_CHUNK_SIZE in Triton's
    interpreter."""
    if chunk_size is None:
        chunk_size = default_chunk_size(u.device)
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    inputs = [t.contiguous() for t in (u, delta, A, B, C, D, delta_bias)]
    for t in inputs:
        _check_layout(t)
    keep_states = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)  # for the backward pass
    y = _FusedScan.apply(*inputs, tuple(kinds), num_slices, chunk_size, keep_states)
    return y if z is None else y * F.silu(z)


def probe(device: str, states: int = 16, width: int = 4) -> None:
    """Runs every kernel once on ``device`` at a layer's compile-time arguments (``states`` N,
    conv ``width``, the default chunk size): a forward without autograd, as at inference, then
    a forward and backward. Raises whatever fails.

    Autograd is on and inference mode off inside, whatever the caller's: nnU-Net's predictor
    runs the network under ``torch.inference_mode()``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        _probe(torch.device(device), states, width)


def _probe(device: torch.device, states: int, width: int) -> None:
    # sizes divisible by 16, as a network's are, for Triton's integer specialisation
    kinds, length, channels, num_slices = (FORWARD, REVERSE, INTER_SLICE), 16, 16, 16
    x = torch.randn(1, length, channels, device=device, requires_grad=True)
    conv_weight, conv_bias = torch.randn(3, width, channels, device=device), torch.randn(3, channels, device=device)
    A = -torch.rand(3, states, channels, device=device)
    B, C = (torch.randn(1, 3, length, states, device=device) for _ in range(2))
    D, delta_bias = torch.ones(3, channels, device=device), torch.zeros(3, channels, device=device)

    def tom() -> Tensor:  # (1, L, E)
        u = directional_conv(x, conv_weight, conv_bias, kinds, num_slices)
        return fused_scan(u, u, A, B, C, D, delta_bias, x, kinds, num_slices)

    with torch.no_grad():
        tom()
    tom().sum().backward()
    if not torch.isfinite(x.grad).all():
        raise RuntimeError("the probe's gradients are not finite")
