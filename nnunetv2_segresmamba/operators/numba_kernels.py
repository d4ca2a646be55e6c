"""Compiled CPU kernels of the fused ToM: the causal conv and the selective scan, with their
backward passes, over every direction in one call. Loaded lazily by ``numba_tom``.

Tensors are channels-last, (batch, [direction,] L, E), as ``in_proj`` writes them. Each work
item is one batch element and one block of channels; it walks each direction's scan order
with index arithmetic (:func:`position`), so the reverse and inter-slice sequences are never
copied. The innermost loops run over the contiguous channels of a block, with branch-free
exp, log1p and sigmoid, so that LLVM vectorizes them.

Denormals (fp32 values below 1.2e-38, 8-18x slower on x86): each work item turns on
flush-to-zero and denormals-are-zero for its own thread while it runs and restores the
thread's mode afterwards (x86 MXCSR), and an exponent below ``EXP_FLOOR`` gives a decay of
zero. The change to any output is below 1e-37 in absolute terms; the process's
floating-point mode is never changed.
"""

from __future__ import annotations

import math
import platform

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

FORWARD, REVERSE, INTER_SLICE = 0, 1, 2
FASTMATH = {"contract", "reassoc", "nsz", "arcp"}  # no nnan/ninf: a NaN input stays NaN
EXP_FLOOR = np.float32(-87.0)  # exp(-87) = 1.6e-38 is still normal
ZERO, HALF, ONE, TWO = np.float32(0.0), np.float32(0.5), np.float32(1.0), np.float32(2.0)

jit = nb.njit(fastmath=FASTMATH, error_model="numpy", cache=True)
inline = nb.njit(fastmath=FASTMATH, error_model="numpy", inline="always")  # numba-level inlining: loops vectorize
parallel_jit = nb.njit(parallel=True, fastmath=FASTMATH, error_model="numpy", cache=True)


@inline
def position(kind, k, length, num_slices):
    """The sequence position that step k of a direction reads and writes.

    With L = S*P (S slices of P positions, slice-major): forward j = k; reverse j = L-1-k;
    inter-slice j = (k mod S)*P + k div S.
    """
    if kind == FORWARD:
        return k
    if kind == REVERSE:
        return length - 1 - k
    return (k % num_slices) * (length // num_slices) + k // num_slices


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
    """exp(x) for x <= 0; zero where the result would be denormal."""
    clamped = x if x > EXP_FLOOR else EXP_FLOOR
    k = np.int32(math.floor(clamped * LOG2E + HALF))
    kf = np.float32(k)
    r = clamped - kf * LN2_HI - kf * LN2_LO
    p = ((((P0 * r + P1) * r + P2) * r + P3) * r + P4) * r + P5
    e = (p * r * r + r + ONE) * _float_from_bits(np.int32((k + np.int32(127)) << np.int32(23)))
    return e if x > EXP_FLOOR else ZERO


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
    """log(1 + exp(x)); equals torch's softplus (which returns x above 20) to fp32 rounding."""
    return (x if x > ZERO else ZERO) + log1p_unit(decay(-abs(x)))


@inline
def silu_grad(x):
    s = sigmoid(x)
    return s * (ONE + x * (ONE - s))


@inline
def _channel_block(item, blocks, channels):
    """(batch index, first channel, end channel) of a work item."""
    per_block = (channels + blocks - 1) // blocks
    start = (item % blocks) * per_block
    return item // blocks, start, min(channels, start + per_block)


# ---------------------------------------------------------------- causal depthwise conv + silu


@inline
def _conv_pre(x, weight, bias, b, k, kind, t, length, num_slices, e0, out):
    """out[e] = bias + sum_i w_i x at step t-(W-1)+i, for the channels e0.. of one block."""
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
def conv_forward(x, weight, bias, kinds, num_slices, blocks, out):
    """out[b, k, j] = silu(causal conv of x[b] in direction k's order) at position j.

    Shapes: x (B, L, E); weight (K, W, E); bias (K, E); out (B, K, L, E).
    """
    batch, length, channels = x.shape
    for item in nb.prange(batch * blocks):
        b, e0, e1 = _channel_block(item, blocks, channels)
        pre = np.empty(e1 - e0, np.float32)
        for k in range(kinds.shape[0]):
            for t in range(length):
                _conv_pre(x, weight, bias, b, k, kinds[k], t, length, num_slices, e0, pre)
                j = position(kinds[k], t, length, num_slices)
                for e in range(e1 - e0):
                    out[b, k, j, e0 + e] = pre[e] * sigmoid(pre[e])


@parallel_jit
def conv_backward(x, weight, bias, kinds, num_slices, blocks, grad_out, grad_x, grad_weight_parts, grad_bias_parts):
    """Gradients of :func:`conv_forward`. grad_x (B, L, E) sums the directions and must be
    zero on entry; the weight and bias gradients are per batch element, (B, K, W, E) and
    (B, K, E), zero on entry and summed by the caller."""
    batch, length, channels = x.shape
    width = weight.shape[1]
    for item in nb.prange(batch * blocks):
        b, e0, e1 = _channel_block(item, blocks, channels)
        pre = np.empty(e1 - e0, np.float32)
        for k in range(kinds.shape[0]):
            kind = kinds[k]
            for t in range(length):
                _conv_pre(x, weight, bias, b, k, kind, t, length, num_slices, e0, pre)
                j = position(kind, t, length, num_slices)
                for e in range(e1 - e0):
                    pre[e] = grad_out[b, k, j, e0 + e] * silu_grad(pre[e])  # now the gradient
                    grad_bias_parts[b, k, e0 + e] += pre[e]
                for i in range(width):
                    step = t - (width - 1) + i
                    if step >= 0:
                        source = position(kind, step, length, num_slices)
                        for e in range(e1 - e0):
                            grad_weight_parts[b, k, i, e0 + e] += pre[e] * x[b, source, e0 + e]
                            grad_x[b, source, e0 + e] += pre[e] * weight[k, i, e0 + e]


# ---------------------------------------------------------------- selective scan


@inline
def _step_inputs(u, delta, delta_bias, D, b, k, j, e0, dt, dtx, skip_out):
    """softplus(delta + bias), dt * u and D * u at position j for one channel block."""
    e1 = e0 + dt.shape[0]
    u_j, delta_j, bias, skip = u[b, k, j, e0:e1], delta[b, k, j, e0:e1], delta_bias[k, e0:e1], D[k, e0:e1]
    for e in range(dt.shape[0]):
        dt[e] = softplus(delta_j[e] + bias[e])
        dtx[e] = dt[e] * u_j[e]
        skip_out[e] = skip[e] * u_j[e]


@parallel_jit
def scan_forward(u, delta, A, B, C, D, delta_bias, z, kinds, num_slices, chunk, blocks, y, y_ungated, entering):
    """y = silu(z) * sum over directions of (scan + D u), each direction in its own order.

    Shapes: u, delta (Bt, K, L, E); A (K, N, E); B, C (Bt, K, L, N); D, delta_bias (K, E);
    z (Bt, L, E). Writes y and y_ungated (Bt, L, E) and, when ``entering`` is not empty,
    the state entering every ``chunk`` steps, (Bt, K, ceil(L / chunk), N, E).
    """
    batch, directions, length, channels = u.shape
    states = A.shape[1]
    keep_states = entering.shape[2] > 0
    for item in nb.prange(batch * blocks):
        fp_mode = denormals_are_zero()
        b, e0, e1 = _channel_block(item, blocks, channels)
        width = e1 - e0
        h = np.empty((states, width), np.float32)
        dt, dtx, out = np.empty(width, np.float32), np.empty(width, np.float32), np.empty(width, np.float32)
        y_ungated[b, :, e0:e1] = ZERO
        for k in range(directions):
            h[:] = ZERO
            for t in range(length):
                if keep_states and t % chunk == 0:
                    entering[b, k, t // chunk, :, e0:e1] = h
                j = position(kinds[k], t, length, num_slices)
                _step_inputs(u, delta, delta_bias, D, b, k, j, e0, dt, dtx, out)
                for n in range(states):
                    b_n, c_n, a_n, h_n = B[b, k, j, n], C[b, k, j, n], A[k, n, e0:e1], h[n]
                    for e in range(width):
                        state = decay(dt[e] * a_n[e]) * h_n[e] + dtx[e] * b_n
                        h_n[e] = state
                        out[e] += state * c_n
                y_ungated[b, j, e0:e1] += out
        for j in range(length):
            for e in range(width):
                gate = z[b, j, e0 + e]
                y[b, j, e0 + e] = y_ungated[b, j, e0 + e] * gate * sigmoid(gate)
        restore_fp_mode(fp_mode)


@jit
def _recompute_chunk(u, delta, A, B, D, delta_bias, b, k, kind, t0, t1, length, num_slices, e0, h, decays, scratch):
    """h[1 + t - t0] = state after step t and decays[t - t0] = exp(dt A), for t in [t0, t1),
    from the entering state h[0]."""
    dt, dtx, unused = scratch
    e1 = e0 + dt.shape[0]
    for t in range(t0, t1):
        j = position(kind, t, length, num_slices)
        _step_inputs(u, delta, delta_bias, D, b, k, j, e0, dt, dtx, unused)
        for n in range(A.shape[1]):
            b_n, a_n, decay_n = B[b, k, j, n], A[k, n, e0:e1], decays[t - t0, n]
            before, after = h[t - t0, n], h[t - t0 + 1, n]
            for e in range(dt.shape[0]):
                a = decay(dt[e] * a_n[e])
                decay_n[e] = a
                after[e] = a * before[e] + dtx[e] * b_n


@parallel_jit
def scan_backward(
    u, delta, A, B, C, D, delta_bias, z, kinds, num_slices, chunk, blocks, entering, y_ungated, grad_y,
    grad_u, grad_delta, grad_z, grad_A_parts, grad_D_parts, grad_B_parts, grad_C_parts,
):
    """Gradients of :func:`scan_forward`, one chunk at a time from the last: the chunk's states
    are recomputed from the saved entering state, then the adjoint recurrence
    G_t = C_t g_t + a_{t+1} G_{t+1} runs backwards through them.

    Partial sums, zero on entry and summed by the caller: A (Bt, K, N, E) and D (Bt, K, E)
    per batch element; B and C (Bt, blocks, K, L, N) per channel block.
    """
    batch, directions, length, channels = u.shape
    states = A.shape[1]
    for item in nb.prange(batch * blocks):
        fp_mode = denormals_are_zero()
        b, e0, e1 = _channel_block(item, blocks, channels)
        block, width = item % blocks, e1 - e0
        h = np.empty((chunk + 1, states, width), np.float32)
        decays = np.empty((chunk, states, width), np.float32)
        G, a_next = np.empty((states, width), np.float32), np.empty((states, width), np.float32)
        scratch = (np.empty(width, np.float32), np.empty(width, np.float32), np.empty(width, np.float32))
        dt, dtx, skip = scratch
        g, gx, gdt = np.empty(width, np.float32), np.empty(width, np.float32), np.empty(width, np.float32)
        for j in range(length):
            for e in range(width):
                gate = z[b, j, e0 + e]
                grad_z[b, j, e0 + e] = grad_y[b, j, e0 + e] * y_ungated[b, j, e0 + e] * silu_grad(gate)
        for k in range(directions):
            kind = kinds[k]
            G[:] = ZERO
            a_next[:] = ZERO
            for c in range((length + chunk - 1) // chunk - 1, -1, -1):
                t0, t1 = c * chunk, min(length, (c + 1) * chunk)
                h[0] = entering[b, k, c, :, e0:e1]
                _recompute_chunk(u, delta, A, B, D, delta_bias, b, k, kind, t0, t1, length, num_slices, e0, h,
                                 decays, scratch)
                for t in range(t1 - 1, t0 - 1, -1):
                    j = position(kind, t, length, num_slices)
                    _step_inputs(u, delta, delta_bias, D, b, k, j, e0, dt, dtx, skip)
                    u_j, gate_j, grad_y_j = u[b, k, j, e0:e1], z[b, j, e0:e1], grad_y[b, j, e0:e1]
                    skip_w, grad_skip = D[k, e0:e1], grad_D_parts[b, k, e0:e1]
                    for e in range(width):
                        g[e] = grad_y_j[e] * gate_j[e] * sigmoid(gate_j[e])
                        gx[e] = g[e] * skip_w[e]
                        gdt[e] = ZERO
                        grad_skip[e] += g[e] * u_j[e]
                    for n in range(states):
                        b_n, c_n, a_n, G_n, a_next_n = B[b, k, j, n], C[b, k, j, n], A[k, n, e0:e1], G[n], a_next[n]
                        decay_n, before, after = decays[t - t0, n], h[t - t0, n], h[t - t0 + 1, n]
                        grad_a_n = grad_A_parts[b, k, n, e0:e1]
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
                        grad_B_parts[b, block, k, j, n] = grad_b
                        grad_C_parts[b, block, k, j, n] = grad_c
                    delta_j, bias, grad_u_j = delta[b, k, j, e0:e1], delta_bias[k, e0:e1], grad_u[b, k, j, e0:e1]
                    grad_delta_j = grad_delta[b, k, j, e0:e1]
                    for e in range(width):
                        grad_u_j[e] = gx[e]
                        grad_delta_j[e] = gdt[e] * sigmoid(delta_j[e] + bias[e])
        restore_fp_mode(fp_mode)
