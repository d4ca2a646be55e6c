"""The fused ToM on the CPU: every direction's causal conv in one call and every direction's
selective scan in one call, compiled with numba (``operators.numba_kernels``).

Tensors stay channels-last and in sequence order: step k of the reverse and inter-slice
scans reads and writes position j(k) (:func:`numba_kernels.position`), so no flipped or
restacked copy of a (B, L, E) tensor is made. The directions' outputs are summed before the
gate. Autograd keeps the inputs and the state entering every ``chunk_size`` steps, as the
pure path does, and the backward pass recomputes one chunk at a time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor

CHUNK_SIZE = 64  # steps between saved states; the backward's per-thread buffers grow with it
MIN_BLOCK = 16  # channels per work item at least, so the inner loops vectorize
MAX_BACKWARD_BLOCKS = 8  # bounds the backward's per-block partial sums of the B and C gradients


@functools.lru_cache(maxsize=1)
def load_kernels() -> ModuleType:
    """The compiled kernels (importing numba); an ImportError if numba does not load."""
    from nnunetv2_segresmamba.operators import numba_kernels

    return numba_kernels


def _kernels_on_torch_threads() -> ModuleType:
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    return load_kernels()


def _np(t: Tensor):
    """A numpy view of a float32 CPU tensor (strides kept), or of an int64 tuple."""
    return t.detach().numpy()


def _kinds(kinds: Sequence[int]):
    return torch.tensor(list(kinds), dtype=torch.int64).numpy()


def _blocks(batch: int, channels: int, most: int | None = None) -> int:
    """Channel blocks per batch element: two work items per thread where the channels allow."""
    import numba

    wanted = math.ceil(2 * numba.get_num_threads() / batch)
    blocks = max(1, min(wanted, channels // MIN_BLOCK))
    return blocks if most is None else min(blocks, most)


class _DirectionalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, kinds, num_slices):
        kernels = _kernels_on_torch_threads()
        batch, length, channels = x.shape
        out = x.new_empty(batch, len(kinds), length, channels)
        kernels.conv_forward(_np(x), _np(weight), _np(bias), _kinds(kinds), num_slices, _blocks(batch, channels),
                             out.numpy())
        ctx.save_for_backward(x, weight, bias)
        ctx.kinds, ctx.num_slices = kinds, num_slices
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias = ctx.saved_tensors
        kernels = _kernels_on_torch_threads()
        batch, _, channels = x.shape
        grad_x = x.new_zeros(x.shape)
        grad_weight, grad_bias = x.new_zeros(batch, *weight.shape), x.new_zeros(batch, *bias.shape)
        kernels.conv_backward(_np(x), _np(weight), _np(bias), _kinds(ctx.kinds), ctx.num_slices,
                              _blocks(batch, channels), _np(grad_out.contiguous()), grad_x.numpy(),
                              grad_weight.numpy(), grad_bias.numpy())
        return grad_x, grad_weight.sum(0), grad_bias.sum(0), None, None


def directional_conv(x: Tensor, weight: Tensor, bias: Tensor, kinds: Sequence[int], num_slices: int) -> Tensor:
    """silu(causal depthwise conv1d) of x along each direction's scan order.

    Args:
        x: (B, L, E), fp32; any strides (e.g. the first half of ``in_proj``'s output).
        weight: (K, W, E), one depthwise kernel per direction, contiguous.
        bias: (K, E).
        kinds: K direction kinds (``numba_kernels.FORWARD``, ``REVERSE``, ``INTER_SLICE``).
        num_slices: S of the inter-slice order; L must be a multiple of it.

    Returns:
        (B, K, L, E): direction k's output at each sequence position.
    """
    return _DirectionalConv.apply(x, weight, bias, tuple(kinds), num_slices)


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, z, kinds, num_slices, chunk_size, keep_states):
        kernels = _kernels_on_torch_threads()
        batch, directions, length, channels = u.shape
        y, y_ungated = u.new_empty(batch, length, channels), u.new_empty(batch, length, channels)
        chunks = math.ceil(length / chunk_size) if keep_states else 0
        entering = u.new_empty(batch, directions, chunks, A.shape[1], channels)
        kernels.scan_forward(*(_np(t) for t in (u, delta, A, B, C, D, delta_bias, z)), _kinds(kinds), num_slices,
                             chunk_size, _blocks(batch, channels), y.numpy(), y_ungated.numpy(), entering.numpy())
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, z, entering, y_ungated)
        ctx.kinds, ctx.num_slices, ctx.chunk_size = kinds, num_slices, chunk_size
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, delta_bias, z, entering, y_ungated = ctx.saved_tensors
        kernels = _kernels_on_torch_threads()
        batch, directions, length, channels = u.shape
        blocks = _blocks(batch, channels, MAX_BACKWARD_BLOCKS)
        grad_u, grad_delta, grad_z = torch.empty_like(u), torch.empty_like(delta), u.new_empty(z.shape)
        grad_A, grad_D = u.new_zeros(batch, *A.shape), u.new_zeros(batch, *D.shape)
        grad_B = u.new_empty(batch, blocks, *B.shape[1:])
        grad_C = u.new_empty(batch, blocks, *C.shape[1:])
        inputs = (u, delta, A, B, C, D, delta_bias, z)
        outputs = (grad_u, grad_delta, grad_z, grad_A, grad_D, grad_B, grad_C)
        kernels.scan_backward(*(_np(t) for t in inputs), _kinds(ctx.kinds), ctx.num_slices, ctx.chunk_size, blocks,
                              _np(entering), _np(y_ungated), _np(grad_y.contiguous()), *(t.numpy() for t in outputs))
        return (grad_u, grad_delta, grad_A.sum(0), grad_B.sum(1), grad_C.sum(1), grad_D.sum(0),
                grad_delta.sum(dim=(0, 2)), grad_z, None, None, None, None)


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
    chunk_size: int = CHUNK_SIZE,
) -> Tensor:
    """Selective scans of K directions, each in its own order, summed and gated once.

    ``y_j = silu(z_j) * sum_k (<h^k_j, C^k_j> + D^k u^k_j)`` with, along direction k's steps,
    ``h_t = exp(softplus(delta_t + delta_bias) A) h_{t-1} + softplus(...) B_t u_t``.

    Args:
        u, delta: (B, K, L, E), fp32, contiguous, at sequence positions.
        A: (K, N, E); B, C: (B, K, L, N); D, delta_bias: (K, E); all contiguous.
        z: (B, L, E), any strides.
        kinds, num_slices: as in :func:`directional_conv`.
        chunk_size: steps between the states kept for the backward pass.

    Returns:
        y, (B, L, E).
    """
    inputs = (u, delta, A, B, C, D, delta_bias, z)
    keep_states = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)  # for the backward pass
    return _FusedScan.apply(*inputs, tuple(kinds), num_slices, chunk_size, keep_states)
