"""The fused ToM on the GPU with Triton: every direction's causal conv in one launch and every
direction's selective scan in one launch, forward and backward (``operators.triton_kernels``).

The twin of ``numba_tom``, with the same functions, layouts and semantics: tensors stay
channels-last and in sequence order, each direction reads its own order by index arithmetic
(no flipped or restacked copies), and the directions' outputs are summed before the gate.
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
from collections.abc import Sequence
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from nnunetv2_segresmamba.operators.backends import TRITON_DEVICE_HINT, triton_runs_on

CHUNK_SIZE = 64  # steps per associative scan and between the states kept for the backward pass
# Triton's interpreter combines a scan's elements one by one, so its time grows with the
# padded tile: shorter chunks waste less on the short sequences of the deep stages.
INTERPRETER_CHUNK_SIZE = 16
# Channels per scan program. On a GPU one: a program walks the whole sequence, so batch x E
# programs are what fill the GPU at batch 1, and ptxas (sm_90) fits the backward in 168
# registers without spills, where 4 channels spill 576 bytes. Triton's CPU interpreter runs
# fewer, larger programs faster.
CUDA_BLOCK_E, INTERPRETER_BLOCK_E = 1, 4
CONV_BLOCK_L, CONV_BLOCK_E = 32, 32  # 64 steps spill in the weight-gradient kernel (255 registers)
NUM_WARPS = 4


@functools.lru_cache(maxsize=1)
def load_kernels() -> ModuleType:
    """The Triton kernels (importing triton); an ImportError if triton does not load."""
    from nnunetv2_segresmamba.operators import triton_kernels

    return triton_kernels


def _kinds(kinds: Sequence[int], device: torch.device) -> Tensor:
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
    """The compile-time arguments of the scan kernels (CUDA_BLOCK_E says why one channel on a GPU)."""
    return {"CHUNK": chunk_size, "BLOCK_E": CUDA_BLOCK_E if device.type == "cuda" else INTERPRETER_BLOCK_E,
            "BLOCK_N": 1 << max(0, math.ceil(math.log2(states))), "num_warps": NUM_WARPS}


class _DirectionalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, kinds, num_slices):
        kernels = load_kernels()
        batch, length, channels = x.shape
        directions, width, _ = weight.shape
        out = x.new_empty(batch, directions, length, channels)
        kinds_t = _kinds(kinds, x.device)
        grid = (batch * directions, _cdiv(length, CONV_BLOCK_L), _cdiv(channels, CONV_BLOCK_E))
        kernels.conv_forward[grid](x, x.stride(0), x.stride(1), weight, bias, kinds_t, out,
                                   length, channels, num_slices, directions, **conv_meta(width))
        ctx.save_for_backward(x, weight, bias, kinds_t)
        ctx.num_slices = num_slices
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, kinds_t = ctx.saved_tensors
        kernels = load_kernels()
        batch, length, channels = x.shape
        directions, width, _ = weight.shape
        grid = (batch * directions, _cdiv(length, CONV_BLOCK_L), _cdiv(channels, CONV_BLOCK_E))
        grad_pre = torch.empty_like(grad_out)
        grad_weight = x.new_empty(batch, grid[1], directions, width, channels)  # per block of steps
        grad_bias = x.new_empty(batch, grid[1], directions, channels)
        kernels.conv_backward_weights[grid](x, x.stride(0), x.stride(1), weight, bias, kinds_t,
                                            grad_out.contiguous(), grad_pre, grad_weight, grad_bias,
                                            length, channels, ctx.num_slices, directions, **conv_meta(width))
        grad_x = x.new_empty(batch, length, channels)
        kernels.conv_backward_input[(batch, grid[1], grid[2])](grad_pre, weight, kinds_t, grad_x, length, channels,
                                                               ctx.num_slices, directions, **conv_meta(width))
        return grad_x, grad_weight.sum(dim=(0, 1)), grad_bias.sum(dim=(0, 1)), None, None


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
        batch, directions, length, channels = u.shape
        states = A.shape[1]
        chunks = _cdiv(length, chunk_size)
        y = u.new_zeros(batch, length, channels)
        entering = u.new_empty(batch, directions, chunks if keep_states else 0, states, channels)
        kinds_t = _kinds(kinds, u.device)
        meta = scan_meta(chunk_size, states, u.device)
        kernels.scan_forward[(batch, _cdiv(channels, meta["BLOCK_E"]))](
            u, delta, A, B, C, D, delta_bias, kinds_t, y, entering,
            length, channels, states, num_slices, directions, chunks, KEEP_STATES=keep_states, **meta)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, kinds_t, entering)
        ctx.num_slices, ctx.chunk_size = num_slices, chunk_size
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, delta_bias, kinds_t, entering = ctx.saved_tensors
        kernels = load_kernels()
        batch, directions, length, channels = u.shape
        states = A.shape[1]
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_A, grad_D = u.new_empty(batch, *A.shape), u.new_empty(batch, *D.shape)
        grad_B, grad_C = torch.zeros_like(B), torch.zeros_like(C)
        meta = scan_meta(ctx.chunk_size, states, u.device)
        kernels.scan_backward[(batch, _cdiv(channels, meta["BLOCK_E"]), directions)](
            u, delta, A, B, C, D, delta_bias, kinds_t, entering, grad_y.contiguous(),
            grad_u, grad_delta, grad_A, grad_D, grad_B, grad_C,
            length, channels, states, ctx.num_slices, directions, entering.shape[2], **meta)
        return (grad_u, grad_delta, grad_A.sum(0), grad_B, grad_C, grad_D.sum(0), grad_delta.sum(dim=(0, 2)),
                None, None, None, None)


def fused_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    z: Tensor,
    kinds: Sequence[int],
    num_slices: int,
    chunk_size: int | None = None,
) -> Tensor:
    """:func:`numba_tom.fused_scan` on the GPU: the K directions' scans, summed and gated once.
    u, delta (B, K, L, E); A (K, N, E); B, C (B, K, L, N); D, delta_bias (K, E); z (B, L, E)
    -> (B, L, E). ``chunk_size`` (a power of two) is the steps per associative scan; None:
    CHUNK_SIZE on a GPU, INTERPRETER_CHUNK_SIZE in Triton's interpreter."""
    if chunk_size is None:
        chunk_size = CHUNK_SIZE if u.is_cuda else INTERPRETER_CHUNK_SIZE
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    inputs = [t.contiguous() for t in (u, delta, A, B, C, D, delta_bias)]
    for t in inputs:
        _check_layout(t)
    keep_states = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)  # for the backward pass
    y = _FusedScan.apply(*inputs, tuple(kinds), num_slices, chunk_size, keep_states)
    return y * F.silu(z)


def probe(device: str) -> None:
    """One tiny forward and backward of both kernels on ``device``; raises whatever fails."""
    kinds, length, channels, states = (0, 1, 2), 8, 4, 2
    x = torch.randn(1, length, channels, device=device, requires_grad=True)
    conv = directional_conv(x, torch.randn(3, 4, channels, device=device), torch.randn(3, channels, device=device),
                            kinds, num_slices=2)
    A = -torch.rand(3, states, channels, device=device)
    B, C = (torch.randn(1, 3, length, states, device=device) for _ in range(2))
    D, bias = torch.ones(3, channels, device=device), torch.zeros(3, channels, device=device)
    y = fused_scan(conv, conv, A, B, C, D, bias, x, kinds, num_slices=2)
    y.sum().backward()
    if not torch.isfinite(x.grad).all():
        raise RuntimeError("the probe's gradients are not finite")
