"""The fused ToM on the CPU: every direction's causal conv in one call and every direction's
selective scan in one call, compiled with numba (``operators.numba_kernels``).

Tensors stay channels-last and in sequence order: step k of the reverse and inter-slice
scans reads and writes position j(k) (:func:`numba_kernels.position`), so no flipped or
restacked copy of a (B, L, E) tensor is made. The kernel sums the directions' outputs; the
gate silu(z), if any, multiplies that sum afterwards in torch (autograd differentiates it).
Autograd keeps the inputs and the state entering every ``chunk_size`` steps, as the pure path
does, and the backward pass recomputes one chunk at a time.

The kernels' outputs and gradients are the same bits on any number of threads, because the
channel blocks of the work items depend on the channel count alone (:func:`channel_blocks`):
where a block ends decides which channels its vectorized loops leave to scalar code, and the
B and C gradients are sums of per-block parts. The gate is torch's: on large tensors its silu
may round an element where torch's threads split the work differently (one of 3M seen), as
torch's other CPU ops may; with ``z=None`` the output is the kernels' alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_SIZE = 64  # steps between saved states; the backward's per-thread buffers grow with it
MIN_BLOCK = 16  # channels per work item at least, so the inner loops vectorize
MAX_BLOCKS = 16  # channel blocks per batch element: work for 16+ threads at batch 2 (E >= 256)
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
    """A numpy view of a float32 CPU tensor (strides kept)."""
    return t.detach().numpy()


def _directions(kernels: ModuleType, kinds: Sequence[int], num_slices: int):
    return kernels.Directions(kinds=torch.tensor(list(kinds), dtype=torch.int64).numpy(), num_slices=num_slices)


def channel_blocks(channels: int, most: int = MAX_BLOCKS) -> int:
    """Channel blocks per batch element: as many as the channels allow (``MIN_BLOCK`` each), up
    to ``most``, whatever the thread count."""
    return max(1, min(most, channels // MIN_BLOCK))


class _DirectionalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, kinds, num_slices):
        kernels = _kernels_on_torch_threads()
        batch, length, channels = x.shape
        out = x.new_empty(batch, len(kinds), length, channels)
        inputs = kernels.ConvInputs(x=_np(x), weight=_np(weight), bias=_np(bias))
        kernels.conv_forward(inputs, _directions(kernels, kinds, num_slices), channel_blocks(channels), out.numpy())
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
        inputs = kernels.ConvInputs(x=_np(x), weight=_np(weight), bias=_np(bias))
        grads = kernels.ConvGrads(x=grad_x.numpy(), weight=grad_weight.numpy(), bias=grad_bias.numpy())
        kernels.conv_backward(inputs, _directions(kernels, ctx.kinds, ctx.num_slices), channel_blocks(channels),
                              _np(grad_out.contiguous()), grads)
        return grad_x, grad_weight.sum(0), grad_bias.sum(0), None, None


def directional_conv(x: Tensor, weight: Tensor, bias: Tensor, kinds: Sequence[int], num_slices: int) -> Tensor:
    """silu(causal depthwise conv1d) of x along each direction's scan order.

    Args:
        x: (B, L, E), fp32; any strides (e.g. the first half of ``in_proj``'s output).
        weight: (K, W, E), one depthwise kernel per direction, contiguous.
        bias: (K, E).
        kinds: K direction kinds, each one of ``operators.directions.KINDS`` (``FORWARD``,
            ``REVERSE``, ``INTER_SLICE``, ``INTER_SLICE_REVERSE``).
        num_slices: S of the inter-slice orders; L must be a multiple of it.

    Returns:
        (B, K, L, E): direction k's output at each sequence position.
    """
    return _DirectionalConv.apply(x, weight, bias, tuple(kinds), num_slices)


def _scan_inputs(kernels: ModuleType, u, delta, A, B, C, D, delta_bias):
    return kernels.ScanInputs(u=_np(u), delta=_np(delta), A=_np(A), B=_np(B), C=_np(C), D=_np(D),
                              delta_bias=_np(delta_bias))


class _FusedScan(torch.autograd.Function):
    """The directions' scans summed, before any gate: (u, delta, A, B, C, D, bias) -> (B, L, E)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, kinds, num_slices, chunk_size, keep_states):
        kernels = _kernels_on_torch_threads()
        batch, directions, length, channels = u.shape
        y = u.new_empty(batch, length, channels)
        chunks = math.ceil(length / chunk_size) if keep_states else 0
        entering = u.new_empty(batch, directions, chunks, A.shape[1], channels)
        outputs = kernels.ScanOutputs(y=y.numpy(), entering=entering.numpy())
        kernels.scan_forward(_scan_inputs(kernels, u, delta, A, B, C, D, delta_bias),
                             _directions(kernels, kinds, num_slices), chunk_size, channel_blocks(channels), outputs)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, entering)
        ctx.kinds, ctx.num_slices, ctx.chunk_size = kinds, num_slices, chunk_size
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, delta_bias, entering = ctx.saved_tensors
        kernels = _kernels_on_torch_threads()
        batch = u.shape[0]
        blocks = channel_blocks(u.shape[3], MAX_BACKWARD_BLOCKS)
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_A, grad_D = u.new_zeros(batch, *A.shape), u.new_zeros(batch, *D.shape)
        grad_B = u.new_empty(batch, blocks, *B.shape[1:])
        grad_C = u.new_empty(batch, blocks, *C.shape[1:])
        grads = kernels.ScanGrads(u=grad_u.numpy(), delta=grad_delta.numpy(), A_parts=grad_A.numpy(),
                                  D_parts=grad_D.numpy(), B_parts=grad_B.numpy(), C_parts=grad_C.numpy())
        kernels.scan_backward(_scan_inputs(kernels, u, delta, A, B, C, D, delta_bias),
                              _directions(kernels, ctx.kinds, ctx.num_slices), ctx.chunk_size, blocks,
                              kernels.ScanSaved(entering=_np(entering)), _np(grad_y.contiguous()), grads)
        return (grad_u, grad_delta, grad_A.sum(0), grad_B.sum(1), grad_C.sum(1), grad_D.sum(0),
                grad_delta.sum(dim=(0, 2)), None, None, None, None)


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
    chunk_size: int = CHUNK_SIZE,
) -> Tensor:
    """Selective scans of K directions, each in its own order, summed, then gated once (unless z is None).

    ``y_j = silu(z_j) * sum_k (<h^k_j, C^k_j> + D^k u^k_j)`` with, along direction k's steps,
    ``h_t = exp(softplus(delta_t + delta_bias) A) h_{t-1} + softplus(...) B_t u_t``.

    Args:
        u, delta: (B, K, L, E), fp32, contiguous, at sequence positions.
        A: (K, N, E); B, C: (B, K, L, N); D, delta_bias: (K, E); all contiguous.
        z: (B, L, E), any strides; None: no gate, the sum itself (SS2D gates after its norm).
        kinds, num_slices: as in :func:`directional_conv`.
        chunk_size: steps between the states kept for the backward pass.

    Returns:
        y, (B, L, E).
    """
    inputs = (u, delta, A, B, C, D, delta_bias)
    keep_states = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)  # for the backward pass
    y = _FusedScan.apply(*inputs, tuple(kinds), num_slices, chunk_size, keep_states)
    return y if z is None else y * F.silu(z)
