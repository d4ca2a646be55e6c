"""Compiled CPU kernels of the fused ToM: the causal conv and the selective scan, with their
backward passes, over every direction in one call. Loaded lazily by ``numba_tom``. The scan
returns the directions' sum before any gate (``numba_tom`` gates it in torch).

Tensors are channels-last, (batch, [direction,] L, E), as ``in_proj`` writes them. The
kernels take their arrays in named groups (:class:`ConvInputs`, :class:`ScanInputs`,
:class:`ScanGrads`...), read by field name, and check every shape before any work starts.
Each work item is one batch element and one block of channels (:func:`channel_block`); it
walks each direction's scan order with index arithmetic (:func:`position`), so the reverse
and inter-slice sequences are never copied. The innermost loops run over the contiguous
channels of a block, with branch-free exp, log1p and sigmoid, so that LLVM vectorizes them.
A NaN input gives NaN where the pure path gives NaN.

Denormals (fp32 values below 1.2e-38, many times slower on x86; ``benchmarks/scan_operator.py``'s
``scan_denormal`` times the kernels on them): each scan work item turns on
flush-to-zero and denormals-are-zero for its own thread while it runs and restores the
thread's mode afterwards (x86 MXCSR), also when it raises, and an exponent below
``EXP_FLOOR`` gives a decay of zero. The change to any output is below 1e-37 in absolute
terms; the process's floating-point mode is never changed.

Reproducibility: every output element is computed by one work item in a fixed order, so it
does not depend on the number of blocks, except the per-block partial sums of the B and C
gradients (their caller fixes the block count).
"""

from __future__ import annotations

import math
import platform
from typing import NamedTuple

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from nnunetv2_segresmamba.operators import directions as _directions_module
from nnunetv2_segresmamba.operators.directions import FORWARD, INTER_SLICE, INTER_SLICE_REVERSE, REVERSE
from nnunetv2_segresmamba.operators.numba_cache import cached_njit

FASTMATH = {"contract", "reassoc", "nsz", "arcp"}  # no nnan/ninf: a NaN input stays NaN
EXP_FLOOR = np.float32(-87.0)  # exp(-87) = 1.6e-38 is still normal
ZERO, HALF, ONE, TWO = np.float32(0.0), np.float32(0.5), np.float32(1.0), np.float32(2.0)

# cached in the per-user folder of operators.numba_cache; directions' kinds are compiled in as constants
COMPILED_IN = (_directions_module.__file__,)
jit = cached_njit(COMPILED_IN, fastmath=FASTMATH, error_model="numpy")
inline = nb.njit(fastmath=FASTMATH, error_model="numpy", inline="always")  # numba-level inlining: loops vectorize
parallel_jit = cached_njit(COMPILED_IN, parallel=True, fastmath=FASTMATH, error_model="numpy")


# ---------------------------------------------------------------- the kernels' argument groups


class Directions(NamedTuple):
    """The scan orders: ``kinds`` (K,) int64, one of ``operators.directions.KINDS`` per
    direction; ``num_slices`` S of the inter-slice orders (L a multiple of S)."""

    kinds: np.ndarray
    num_slices: int


class ConvInputs(NamedTuple):
    """x (B, L, E), any strides; weight (K, W, E); bias (K, E)."""

    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray


class ConvGrads(NamedTuple):
    """Written by :func:`conv_backward`, zero on entry: x (B, L, E), summed over directions;
    weight (B, K, W, E) and bias (B, K, E), per batch element (the caller sums them)."""

    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray


class ScanInputs(NamedTuple):
    """u, delta (Bt, K, L, E); A (K, N, E); B, C (Bt, K, L, N); D, delta_bias (K, E)."""

    u: np.ndarray
    delta: np.ndarray
    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    D: np.ndarray
    delta_bias: np.ndarray


class ScanOutputs(NamedTuple):
    """Written by :func:`scan_forward`: y (Bt, L, E), the directions' sum (ungated); entering
    (Bt, K, chunks, N, E), the state entering every ``chunk`` steps, chunks = ceil(L / chunk),
    or chunks = 0 to keep none."""

    y: np.ndarray
    entering: np.ndarray


class ScanSaved(NamedTuple):
    """What :func:`scan_backward` reads from the forward pass: ``ScanOutputs``' entering (with
    every chunk's state)."""

    entering: np.ndarray


class ScanGrads(NamedTuple):
    """Written by :func:`scan_backward`: u, delta (Bt, K, L, E); partial sums, zero on entry and
    summed by the caller: A_parts (Bt, K, N, E) and D_parts (Bt, K, E) per batch element,
    B_parts and C_parts (Bt, blocks, K, L, N) per channel block."""

    u: np.ndarray
    delta: np.ndarray
    A_parts: np.ndarray
    D_parts: np.ndarray
    B_parts: np.ndarray
    C_parts: np.ndarray


# ---------------------------------------------------------------- orders and work items


@inline
def position(kind, k, length, num_slices):
    """The sequence position that step k of a direction reads and writes.

    With L = S*P (S slices of P positions, slice-major): forward j = k; reverse j = L-1-k;
    inter-slice j = (k mod S)*P + k div S; inter-slice reverse: inter-slice's j of step L-1-k.
    """
    step = length - 1 - k if kind == REVERSE or kind == INTER_SLICE_REVERSE else k
    if kind == FORWARD or kind == REVERSE:
        return step
    return (step % num_slices) * (length // num_slices) + step // num_slices


@nb.njit(inline="always")
def channel_block(block, blocks, channels):
    """(first, end) channel of block ``block`` of ``blocks``: consecutive, covering all
    channels, widths floor or ceil of channels / blocks (so positive for blocks <= channels)."""
    return block * channels // blocks, (block + 1) * channels // blocks


@inline
def _work_item(item, blocks, channels):
    """(batch index, block, first channel, end channel) of a work item."""
    block = item % blocks
    e0, e1 = channel_block(block, blocks, channels)
    return item // blocks, block, e0, e1


# ---------------------------------------------------------------- this thread's denormal mode

X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
FTZ_DAZ = np.int32(0x8040)  # MXCSR bits: flush-to-zero (15), denormals-are-zero (6)


def _mxcsr_intrinsic(name: str, store: bool):
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        if store:
            builder.store(args[0], slot)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [slot.type]), name)
        builder.call(fn, [slot])
        return context.get_dummy_value() if store else builder.load(slot)

    return codegen


@intrinsic
def _read_mxcsr(typingctx):
    return types.int32(), _mxcsr_intrinsic("llvm.x86.sse.stmxcsr", store=False)


@intrinsic
def _write_mxcsr(typingctx, mode):
    return types.void(types.int32), _mxcsr_intrinsic("llvm.x86.sse.ldmxcsr", store=True)


@inline
def denormals_are_zero():
    """Turns on FTZ and DAZ for the calling thread (x86 only); returns the mode to restore."""
    if X86:
        mode = _read_mxcsr()
        _write_mxcsr(mode | FTZ_DAZ)
        return mode
    return np.int32(0)


@inline
def restore_fp_mode(mode):
    if X86:
        _write_mxcsr(mode)


@nb.njit(parallel=True)
def threads_denormal_modes(items):
    """The FTZ/DAZ bits of the thread that runs each of ``items`` parallel work items, (items,)
    int32, 0 where both are off (always 0 off x86)."""
    modes = np.zeros(items, np.int32)
    for item in nb.prange(items):
        if X86:
            modes[item] = _read_mxcsr() & FTZ_DAZ
    return modes


# ---------------------------------------------------------------- branch-free scalar math


@intrinsic
def _float_from_bits(typingctx, bits):
    """Reinterprets an int32 as the fp32 with those bits."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


# Cephes' expf: exp(x) = 2^k exp(r), |r| <= ln2 / 2, exp(r) by a polynomial (about 1 ulp).
LOG2E = np.float32(1.44269504088896341)
LN2_HI, LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)
P0, P1, P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
P3, P4, P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)


@inline
def decay(x):
    """exp(x) for x <= 0; zero where the result would be denormal; NaN for NaN."""
    clamped = x if x > EXP_FLOOR else EXP_FLOOR  # also for NaN, so the int conversion below is defined
    k = np.int32(math.floor(clamped * LOG2E + HALF))
    kf = np.float32(k)
    r = clamped - kf * LN2_HI - kf * LN2_LO
    p = ((((P0 * r + P1) * r + P2) * r + P3) * r + P4) * r + P5
    e = (p * r * r + r + ONE) * _float_from_bits(np.int32((k + np.int32(127)) << np.int32(23)))
    return e if x > EXP_FLOOR else (ZERO if x <= EXP_FLOOR else x)  # x is NaN in the last case


@inline
def log1p_unit(y):
    """log(1 + y) for 0 <= y <= 1: 2 atanh(s), s = y / (2 + y) <= 1/3, by its odd series."""
    s = y / (TWO + y)
    s2 = s * s
    acc = np.float32(1 / 15)
    acc = acc * s2 + np.float32(1 / 13)
    acc = acc * s2 + np.float32(1 / 11)
    acc = acc * s2 + np.float32(1 / 9)
    acc = acc * s2 + np.float32(1 / 7)
    acc = acc * s2 + np.float32(1 / 5)
    acc = acc * s2 + np.float32(1 / 3)
    return TWO * s * (acc * s2 + ONE)


@inline
def sigmoid(x):
    e = decay(-abs(x))
    r = ONE / (ONE + e)
    return r if x >= ZERO else e * r


@inline
def softplus(x):
    """log(1 + exp(x)); equals torch's softplus (which returns x above 20) to fp32 rounding; NaN for NaN."""
    return (ZERO if x <= ZERO else x) + log1p_unit(decay(-abs(x)))


@inline
def silu_grad(x):
    s = sigmoid(x)
    return s * (ONE + x * (ONE - s))


# ---------------------------------------------------------------- shape checks, before any work


@jit
def _check_order(directions, length, channels, blocks):
    num_slices, kinds = directions.num_slices, directions.kinds
    if num_slices < 1 or length % num_slices != 0:
        raise ValueError("num_slices must be positive and divide the sequence length L; (num_slices, L):",
                         num_slices, length)
    for k in range(kinds.shape[0]):
        kind = kinds[k]
        if kind != FORWARD and kind != REVERSE and kind != INTER_SLICE and kind != INTER_SLICE_REVERSE:
            raise ValueError("direction kinds must be operators.directions' FORWARD, REVERSE, INTER_SLICE or "
                             "INTER_SLICE_REVERSE; got", kind)
    if blocks < 1 or blocks > max(channels, 1):
        raise ValueError("blocks must be between 1 and the channel count E; (blocks, E):", blocks, channels)


@jit
def _check_conv(inputs, directions, blocks, out):
    """ValueError unless out (and the gradients' x) are (B, K, L, E) for x (B, L, E) and K kinds."""
    batch, length, channels = inputs.x.shape
    directions_count, width = directions.kinds.shape[0], inputs.weight.shape[1]
    _check_order(directions, length, channels, blocks)
    if inputs.weight.shape != (directions_count, width, channels):
        raise ValueError("conv weight must be (K, W, E) for K kinds and x (B, L, E); got", inputs.weight.shape)
    if inputs.bias.shape != (directions_count, channels):
        raise ValueError("conv bias must be (K, E); got", inputs.bias.shape)
    if out.shape != (batch, directions_count, length, channels):
        raise ValueError("conv output (or its gradient) must be (B, K, L, E); got", out.shape)


@jit
def _check_conv_grads(inputs, grads):
    batch, directions_count = grads.weight.shape[0], inputs.weight.shape[0]
    if grads.x.shape != inputs.x.shape or batch != inputs.x.shape[0]:
        raise ValueError("ConvGrads.x must have x's shape (B, L, E); got", grads.x.shape)
    if grads.weight.shape[1:] != inputs.weight.shape:
        raise ValueError("ConvGrads.weight must be (B, K, W, E); got", grads.weight.shape)
    if grads.bias.shape != (batch, directions_count, inputs.bias.shape[1]):
        raise ValueError("ConvGrads.bias must be (B, K, E); got", grads.bias.shape)


@jit
def _check_scan(inputs, directions, chunk, blocks, y, entering):
    """ValueError unless the inputs' shapes agree (see :class:`ScanInputs`), y (the output or
    its gradient) is (Bt, L, E) and entering (Bt, K, ceil(L / chunk) or 0, N, E)."""
    batch, directions_count, length, channels = inputs.u.shape
    states = inputs.A.shape[1]
    _check_order(directions, length, channels, blocks)
    if chunk < 1:
        raise ValueError("chunk must be positive; got", chunk)
    if directions.kinds.shape[0] != directions_count or inputs.delta.shape != inputs.u.shape:
        raise ValueError("u and delta must be (Bt, K, L, E) with one kind per direction; (u, delta, kinds):",
                         inputs.u.shape, inputs.delta.shape, directions.kinds.shape)
    if inputs.A.shape != (directions_count, states, channels):
        raise ValueError("A must be (K, N, E); got", inputs.A.shape)
    if inputs.B.shape != (batch, directions_count, length, states) or inputs.C.shape != inputs.B.shape:
        raise ValueError("B and C must be (Bt, K, L, N); got", inputs.B.shape, inputs.C.shape)
    if inputs.D.shape != (directions_count, channels) or inputs.delta_bias.shape != inputs.D.shape:
        raise ValueError("D and delta_bias must be (K, E); got", inputs.D.shape, inputs.delta_bias.shape)
    if y.shape != (batch, length, channels):
        raise ValueError("y (or its gradient) must be (Bt, L, E); got", y.shape)
    chunks = entering.shape[2]
    if entering.shape != (batch, directions_count, chunks, states, channels) or (
        chunks != 0 and chunks != (length + chunk - 1) // chunk
    ):
        raise ValueError("entering must be (Bt, K, ceil(L / chunk) or 0, N, E); got", entering.shape)


@jit
def _check_scan_grads(inputs, blocks, grads):
    batch, directions_count, length, channels = inputs.u.shape
    states = inputs.A.shape[1]
    if grads.u.shape != inputs.u.shape or grads.delta.shape != inputs.u.shape:
        raise ValueError("ScanGrads.u and .delta must be (Bt, K, L, E); got", grads.u.shape, grads.delta.shape)
    if grads.A_parts.shape != (batch, directions_count, states, channels):
        raise ValueError("ScanGrads.A_parts must be (Bt, K, N, E); got", grads.A_parts.shape)
    if grads.D_parts.shape != (batch, directions_count, channels):
        raise ValueError("ScanGrads.D_parts must be (Bt, K, E); got", grads.D_parts.shape)
    per_block = (batch, blocks, directions_count, length, states)
    if grads.B_parts.shape != per_block or grads.C_parts.shape != per_block:
        raise ValueError("ScanGrads.B_parts and .C_parts must be (Bt, blocks, K, L, N); got",
                         grads.B_parts.shape, grads.C_parts.shape)


# ---------------------------------------------------------------- causal depthwise conv + silu


@inline
def _conv_pre(inputs, b, k, kind, t, length, num_slices, e0, out):
    """out[e] = bias + sum_i w_i x at step t-(W-1)+i, for the channels e0.. of one block."""
    x, weight, bias = inputs.x, inputs.weight, inputs.bias
    width = weight.shape[1]
    for e in range(out.shape[0]):
        out[e] = bias[k, e0 + e]
    for i in range(width):
        step = t - (width - 1) + i
        if step >= 0:
            j = position(kind, step, length, num_slices)
            for e in range(out.shape[0]):
                out[e] += weight[k, i, e0 + e] * x[b, j, e0 + e]


@parallel_jit
def conv_forward(inputs, directions, blocks, out):
    """out[b, k, j] = silu(causal conv of x[b] in direction k's order) at position j.

    Shapes: inputs (:class:`ConvInputs`) x (B, L, E), weight (K, W, E), bias (K, E); out
    (B, K, L, E). ``blocks`` channel blocks per batch element, 1 <= blocks <= E.
    """
    _check_conv(inputs, directions, blocks, out)
    batch, length, channels = inputs.x.shape
    kinds, num_slices = directions.kinds, directions.num_slices
    for item in nb.prange(batch * blocks):
        b, _, e0, e1 = _work_item(item, blocks, channels)
        pre = np.empty(e1 - e0, np.float32)
        for k in range(kinds.shape[0]):
            for t in range(length):
                _conv_pre(inputs, b, k, kinds[k], t, length, num_slices, e0, pre)
                j = position(kinds[k], t, length, num_slices)
                for e in range(e1 - e0):
                    out[b, k, j, e0 + e] = pre[e] * sigmoid(pre[e])


@jit
def _conv_backward_item(inputs, directions, blocks, grad_out, grads, item):
    x, weight = inputs.x, inputs.weight
    length, channels, width = x.shape[1], x.shape[2], weight.shape[1]
    kinds, num_slices = directions.kinds, directions.num_slices
    b, _, e0, e1 = _work_item(item, blocks, channels)
    pre = np.empty(e1 - e0, np.float32)
    for k in range(kinds.shape[0]):
        kind = kinds[k]
        for t in range(length):
            _conv_pre(inputs, b, k, kind, t, length, num_slices, e0, pre)
            j = position(kind, t, length, num_slices)
            for e in range(e1 - e0):
                pre[e] = grad_out[b, k, j, e0 + e] * silu_grad(pre[e])  # the gradient from here on
                grads.bias[b, k, e0 + e] += pre[e]
            for i in range(width):
                step = t - (width - 1) + i
                if step >= 0:
                    source = position(kind, step, length, num_slices)
                    for e in range(e1 - e0):
                        grads.weight[b, k, i, e0 + e] += pre[e] * x[b, source, e0 + e]
                        grads.x[b, source, e0 + e] += pre[e] * weight[k, i, e0 + e]


@parallel_jit
def conv_backward(inputs, directions, blocks, grad_out, grads):
    """Gradients of :func:`conv_forward` for grad_out (B, K, L, E), written to ``grads``
    (:class:`ConvGrads`, zero on entry)."""
    _check_conv(inputs, directions, blocks, grad_out)
    _check_conv_grads(inputs, grads)
    # Each work item is a function: numba loses writes to a tuple's arrays made in a prange body.
    for item in nb.prange(inputs.x.shape[0] * blocks):
        _conv_backward_item(inputs, directions, blocks, grad_out, grads, item)


# ---------------------------------------------------------------- selective scan


@inline
def _step_inputs(inputs, b, k, j, e0, dt, dtx, skip_out):
    """softplus(delta + bias), dt * u and D * u at position j for one channel block."""
    e1 = e0 + dt.shape[0]
    u_j, delta_j = inputs.u[b, k, j, e0:e1], inputs.delta[b, k, j, e0:e1]
    bias, skip = inputs.delta_bias[k, e0:e1], inputs.D[k, e0:e1]
    for e in range(dt.shape[0]):
        dt[e] = softplus(delta_j[e] + bias[e])
        dtx[e] = dt[e] * u_j[e]
        skip_out[e] = skip[e] * u_j[e]


@jit
def _scan_forward_item(inputs, directions, chunk, blocks, outputs, item):
    """One batch element and channel block of :func:`scan_forward`."""
    A, B, C, y, entering = inputs.A, inputs.B, inputs.C, outputs.y, outputs.entering
    _, directions_count, length, channels = inputs.u.shape
    states, keep_states = A.shape[1], entering.shape[2] > 0
    kinds, num_slices = directions.kinds, directions.num_slices
    b, _, e0, e1 = _work_item(item, blocks, channels)
    width = e1 - e0
    h = np.empty((states, width), np.float32)
    dt, dtx, out = np.empty(width, np.float32), np.empty(width, np.float32), np.empty(width, np.float32)
    y[b, :, e0:e1] = ZERO
    for k in range(directions_count):
        h[:] = ZERO
        for t in range(length):
            if keep_states and t % chunk == 0:
                entering[b, k, t // chunk, :, e0:e1] = h
            j = position(kinds[k], t, length, num_slices)
            _step_inputs(inputs, b, k, j, e0, dt, dtx, out)
            for n in range(states):
                b_n, c_n, a_n, h_n = B[b, k, j, n], C[b, k, j, n], A[k, n, e0:e1], h[n]
                for e in range(width):
                    state = decay(dt[e] * a_n[e]) * h_n[e] + dtx[e] * b_n
                    h_n[e] = state
                    out[e] += state * c_n
            y[b, j, e0:e1] += out


@jit
def _scan_forward_flushed(inputs, directions, chunk, blocks, outputs, item):
    """:func:`_scan_forward_item` with this thread's FTZ and DAZ on; False if it raised. The
    thread's mode is restored either way."""
    fp_mode = denormals_are_zero()
    done = True
    try:
        _scan_forward_item(inputs, directions, chunk, blocks, outputs, item)
    except Exception:  # reported by the caller, after the mode is restored
        done = False
    restore_fp_mode(fp_mode)
    return done


@parallel_jit
def scan_forward(inputs, directions, chunk, blocks, outputs):
    """y = sum over directions of (scan + D u), each direction in its own order; no gate.

    ``inputs``: :class:`ScanInputs`; ``directions``: :class:`Directions`; ``outputs``:
    :class:`ScanOutputs`, written: y and, when it has chunks, the state entering every
    ``chunk`` steps. ``blocks`` channel blocks per batch element, 1 <= blocks <= E.
    """
    _check_scan(inputs, directions, chunk, blocks, outputs.y, outputs.entering)
    items = inputs.u.shape[0] * blocks
    failed = np.zeros(items, np.bool_)
    for item in nb.prange(items):
        failed[item] = not _scan_forward_flushed(inputs, directions, chunk, blocks, outputs, item)
    if failed.any():
        raise RuntimeError("scan_forward: a work item raised (numba gives no detail from a parallel work item)")


@jit
def _recompute_chunk(inputs, b, k, kind, t0, t1, length, num_slices, e0, h, decays, scratch):
    """h[1 + t - t0] = state after step t and decays[t - t0] = exp(dt A), for t in [t0, t1),
    from the entering state h[0]."""
    A, B = inputs.A, inputs.B
    dt, dtx, unused = scratch
    e1 = e0 + dt.shape[0]
    for t in range(t0, t1):
        j = position(kind, t, length, num_slices)
        _step_inputs(inputs, b, k, j, e0, dt, dtx, unused)
        for n in range(A.shape[1]):
            b_n, a_n, decay_n = B[b, k, j, n], A[k, n, e0:e1], decays[t - t0, n]
            before, after = h[t - t0, n], h[t - t0 + 1, n]
            for e in range(dt.shape[0]):
                a = decay(dt[e] * a_n[e])
                decay_n[e] = a
                after[e] = a * before[e] + dtx[e] * b_n


@jit
def _scan_backward_item(inputs, directions, chunk, blocks, saved, grad_y, grads, item):
    """One batch element and channel block of :func:`scan_backward`."""
    u, A, B, C, D = inputs.u, inputs.A, inputs.B, inputs.C, inputs.D
    _, directions_count, length, channels = u.shape
    states, kinds, num_slices = A.shape[1], directions.kinds, directions.num_slices
    b, block, e0, e1 = _work_item(item, blocks, channels)
    width = e1 - e0
    h = np.empty((chunk + 1, states, width), np.float32)
    decays = np.empty((chunk, states, width), np.float32)
    G, a_next = np.empty((states, width), np.float32), np.empty((states, width), np.float32)
    scratch = (np.empty(width, np.float32), np.empty(width, np.float32), np.empty(width, np.float32))
    dt, dtx, skip = scratch
    gx, gdt = np.empty(width, np.float32), np.empty(width, np.float32)
    for k in range(directions_count):
        kind = kinds[k]
        G[:] = ZERO
        a_next[:] = ZERO
        for c in range((length + chunk - 1) // chunk - 1, -1, -1):
            t0, t1 = c * chunk, min(length, (c + 1) * chunk)
            h[0] = saved.entering[b, k, c, :, e0:e1]
            _recompute_chunk(inputs, b, k, kind, t0, t1, length, num_slices, e0, h, decays, scratch)
            for t in range(t1 - 1, t0 - 1, -1):
                j = position(kind, t, length, num_slices)
                _step_inputs(inputs, b, k, j, e0, dt, dtx, skip)
                u_j, g = u[b, k, j, e0:e1], grad_y[b, j, e0:e1]  # g: the gradient of this step's output
                skip_w, grad_skip = D[k, e0:e1], grads.D_parts[b, k, e0:e1]
                for e in range(width):
                    gx[e] = g[e] * skip_w[e]
                    gdt[e] = ZERO
                    grad_skip[e] += g[e] * u_j[e]
                for n in range(states):
                    b_n, c_n, a_n, G_n, a_next_n = B[b, k, j, n], C[b, k, j, n], A[k, n, e0:e1], G[n], a_next[n]
                    decay_n, before, after = decays[t - t0, n], h[t - t0, n], h[t - t0 + 1, n]
                    grad_a_n = grads.A_parts[b, k, n, e0:e1]
                    grad_b, grad_c = ZERO, ZERO
                    for e in range(width):
                        adjoint = G_n[e] * a_next_n[e] + g[e] * c_n
                        G_n[e] = adjoint
                        a = decay_n[e]
                        a_next_n[e] = a
                        grad_c += g[e] * after[e]
                        grad_b += adjoint * dtx[e]
                        gx[e] += adjoint * dt[e] * b_n
                        d_exponent = adjoint * before[e] * a  # d/d(dt * A)
                        gdt[e] += adjoint * b_n * u_j[e] + d_exponent * a_n[e]
                        grad_a_n[e] += d_exponent * dt[e]
                    grads.B_parts[b, block, k, j, n] = grad_b
                    grads.C_parts[b, block, k, j, n] = grad_c
                delta_j, bias = inputs.delta[b, k, j, e0:e1], inputs.delta_bias[k, e0:e1]
                grad_u_j, grad_delta_j = grads.u[b, k, j, e0:e1], grads.delta[b, k, j, e0:e1]
                for e in range(width):
                    grad_u_j[e] = gx[e]
                    grad_delta_j[e] = gdt[e] * sigmoid(delta_j[e] + bias[e])


@jit
def _scan_backward_flushed(inputs, directions, chunk, blocks, saved, grad_y, grads, item):
    """:func:`_scan_backward_item` with this thread's FTZ and DAZ on; False if it raised. The
    thread's mode is restored either way."""
    fp_mode = denormals_are_zero()
    done = True
    try:
        _scan_backward_item(inputs, directions, chunk, blocks, saved, grad_y, grads, item)
    except Exception:  # reported by the caller, after the mode is restored
        done = False
    restore_fp_mode(fp_mode)
    return done


@parallel_jit
def scan_backward(inputs, directions, chunk, blocks, saved, grad_y, grads):
    """Gradients of :func:`scan_forward` for grad_y (Bt, L, E), the gradient of its ungated
    sum, one chunk at a time from the last: the chunk's states are recomputed from the saved
    entering state, then the adjoint recurrence G_t = C_t g_t + a_{t+1} G_{t+1} runs backwards
    through them.

    ``inputs``: :class:`ScanInputs`; ``saved``: :class:`ScanSaved`, from a forward pass with
    the same ``chunk``; ``grads``: :class:`ScanGrads`, written. ``blocks`` channel blocks per
    batch element, 1 <= blocks <= E: the B and C gradients are summed per block.
    """
    _check_scan(inputs, directions, chunk, blocks, grad_y, saved.entering)
    if saved.entering.shape[2] == 0 and inputs.u.shape[2] > 0:
        raise ValueError("scan_backward needs the entering states: run scan_forward with them")
    _check_scan_grads(inputs, blocks, grads)
    items = inputs.u.shape[0] * blocks
    failed = np.zeros(items, np.bool_)
    for item in nb.prange(items):
        failed[item] = not _scan_backward_flushed(inputs, directions, chunk, blocks, saved, grad_y, grads, item)
    if failed.any():
        raise RuntimeError("scan_backward: a work item raised (numba gives no detail from a parallel work item)")
