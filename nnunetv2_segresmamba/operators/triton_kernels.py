"""Triton kernels of the fused ToM: the causal conv and the selective scan of every direction,
with their backward passes. Loaded lazily by ``triton_tom``; they run compiled on CUDA and,
under ``TRITON_INTERPRET=1``, on the CPU (for tests).

Layouts are those of ``numba_kernels``: channels-last, (batch, [direction,] L, E), with
step s of direction k reading and writing sequence position :func:`position`, so the reverse
and inter-slice orders are never copied. The scan returns the directions' sum before any gate
(``triton_tom`` gates it in torch). A program owns one batch element and one block of
channels; the scan walks its direction in chunks of ``CHUNK`` steps, solves each chunk with
``tl.associative_scan`` over the (channel, state, step) tile and carries the state to the next.

The kernels take their tensors and sizes in named groups (the NamedTuples below, which Triton
passes as tuples of pointers and integers), read by field name inside the kernels: a tensor
given in the wrong place is a wrong field name, not a silently wrong gradient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import triton
import triton.language as tl

from nnunetv2_segresmamba.operators import directions

if TYPE_CHECKING:
    from torch import Tensor

# the kinds of operators.directions as constexprs, the only globals kernels can read
FORWARD: tl.constexpr = tl.constexpr(directions.FORWARD)
REVERSE: tl.constexpr = tl.constexpr(directions.REVERSE)
INTER_SLICE: tl.constexpr = tl.constexpr(directions.INTER_SLICE)
INTER_SLICE_REVERSE: tl.constexpr = tl.constexpr(directions.INTER_SLICE_REVERSE)


class ConvTensors(NamedTuple):
    """The conv's inputs: x (B, L, E) with unit channel stride, weight (K, WIDTH, E), bias (K, E),
    kinds (K,) int32."""

    x: Tensor
    weight: Tensor
    bias: Tensor
    kinds: Tensor


class ConvGrads(NamedTuple):
    """The conv's gradients: out (B, K, L, E) given; pre (B, K, L, E, before silu), weight
    (B, L blocks, K, WIDTH, E) and bias (B, L blocks, K, E) (per block of steps) written by
    :func:`conv_backward_weights`; x (B, L, E) written by :func:`conv_backward_input`."""

    out: Tensor
    pre: Tensor
    weight: Tensor
    bias: Tensor
    x: Tensor


class ConvSizes(NamedTuple):
    x_stride_b: int
    x_stride_l: int
    length: int
    channels: int
    num_slices: int
    directions: int


class ScanTensors(NamedTuple):
    """The scan's inputs: u, delta (B, K, L, E); A (K, N, E); B, C (B, K, L, N); D, delta_bias
    (K, E); kinds (K,) int32."""

    u: Tensor
    delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor
    delta_bias: Tensor
    kinds: Tensor


class ScanOutputs(NamedTuple):
    """y (B, L, E), zeroed by the caller; entering (B, K, chunks, N, E), the state entering each
    chunk (unused without KEEP_STATES)."""

    y: Tensor
    entering: Tensor


class ScanGrads(NamedTuple):
    """The scan's gradients: y (B, L, E) given; u, delta (before softplus) (B, K, L, E) written;
    A (B, K, N, E) and D (B, K, E) per batch element; B, C (B, K, L, N), zeroed by the caller,
    summed into atomically."""

    y: Tensor
    u: Tensor
    delta: Tensor
    A: Tensor
    D: Tensor
    B: Tensor
    C: Tensor


class ScanSizes(NamedTuple):
    length: int
    channels: int
    states: int
    num_slices: int
    directions: int
    chunks: int


@triton.jit
def _reversed(kind):
    return (kind == REVERSE) | (kind == INTER_SLICE_REVERSE)


@triton.jit
def _inter_slice(kind):
    return (kind == INTER_SLICE) | (kind == INTER_SLICE_REVERSE)


@triton.jit
def position(kind, step, length, num_slices):
    """The sequence position that ``step`` of a direction reads and writes.

    With L = S*P (S slices of P positions, slice-major): forward j = s; reverse j = L-1-s;
    inter-slice j = (s mod S)*P + s div S; inter-slice reverse: inter-slice's j of step L-1-s.
    """
    step = tl.where(_reversed(kind), length - 1 - step, step)
    inter_slice = (step % num_slices) * (length // num_slices) + step // num_slices
    return tl.where(_inter_slice(kind), inter_slice, step)


@triton.jit
def step_of(kind, pos, length, num_slices):
    """The inverse of :func:`position`: the step at which a direction visits ``pos``."""
    per_slice = length // num_slices
    step = tl.where(_inter_slice(kind), (pos % per_slice) * num_slices + pos // per_slice, pos)
    return tl.where(_reversed(kind), length - 1 - step, step)


@triton.jit
def softplus(x):
    """log(1 + exp(x)), as torch computes it: x itself above 20, else log1p(exp(x))."""
    e = tl.exp(tl.minimum(x, 20.0))
    one_plus = 1.0 + e
    log1p = tl.where(one_plus == 1.0, e, tl.log(one_plus) * e / (one_plus - 1.0))  # accurate log1p
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def silu(x):
    return x * tl.sigmoid(x)


@triton.jit
def linear_step(decay_first, drive_first, decay_second, drive_second):
    """Composes h -> a1 h + b1 with h -> a2 h + b2 (first applied first)."""
    return decay_first * decay_second, decay_second * drive_first + drive_second


@triton.jit
def last_step(tile, steps, CHUNK: tl.constexpr):
    """tile[..., CHUNK - 1] of a (BLOCK_E, BLOCK_N, CHUNK) tile, as (BLOCK_E, BLOCK_N)."""
    return tl.sum(tl.where(steps[None, None, :] == CHUNK - 1, tile, 0.0), axis=2)


@triton.jit
def first_step(tile, steps):
    return tl.sum(tl.where(steps[None, None, :] == 0, tile, 0.0), axis=2)


# ---------------------------------------------------------------- the causal depthwise conv


@triton.jit
def _tap(sizes, x_base, kind, steps, e, e_ok, w, WIDTH: tl.constexpr):
    """x at step s - WIDTH + 1 + w of a direction, for each s of ``steps``: (BLOCK_L, BLOCK_E),
    zero before the first step."""
    source = steps - (WIDTH - 1) + w
    ok = (source >= 0) & (source < sizes.length)
    rows = position(kind, source, sizes.length, sizes.num_slices).to(tl.int64)
    return tl.load(x_base + rows[:, None] * sizes.x_stride_l + e[None, :], mask=ok[:, None] & e_ok[None, :],
                   other=0.0)


@triton.jit
def _pre_activation(conv, sizes, x_base, k, kind, steps, e, e_ok,
                    WIDTH: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr):
    """bias_k + sum_w weight_k[w] * tap_w: the conv before silu, (BLOCK_L, BLOCK_E)."""
    acc = tl.zeros((BLOCK_L, BLOCK_E), tl.float32) + tl.load(conv.bias + k * sizes.channels + e, mask=e_ok)[None, :]
    for w in tl.static_range(WIDTH):
        tap = _tap(sizes, x_base, kind, steps, e, e_ok, w, WIDTH)
        acc += tap * tl.load(conv.weight + (k * WIDTH + w) * sizes.channels + e, mask=e_ok)[None, :]
    return acc


@triton.jit
def conv_forward(conv, out_ptr, sizes, WIDTH: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr):
    """out[b, k, position(s)] = silu(bias_k + sum_w weight_k[w] x[position(s - WIDTH + 1 + w)]).

    Grid (B * K, cdiv(L, BLOCK_L), cdiv(E, BLOCK_E)). conv: :class:`ConvTensors`; out
    (B, K, L, E); sizes: :class:`ConvSizes`.
    """
    batch, k = tl.program_id(0) // sizes.directions, tl.program_id(0) % sizes.directions
    kind = tl.load(conv.kinds + k)
    steps = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    e = tl.program_id(2) * BLOCK_E + tl.arange(0, BLOCK_E)
    e_ok = e < sizes.channels
    x_base = conv.x + batch.to(tl.int64) * sizes.x_stride_b
    pre = _pre_activation(conv, sizes, x_base, k, kind, steps, e, e_ok, WIDTH, BLOCK_L, BLOCK_E)
    row = (batch * sizes.directions + k).to(tl.int64) * sizes.length + position(kind, steps, sizes.length,
                                                                                 sizes.num_slices)
    tl.store(out_ptr + row[:, None] * sizes.channels + e[None, :], silu(pre),
             mask=(steps < sizes.length)[:, None] & e_ok[None, :])


@triton.jit
def conv_backward_weights(conv, grads, sizes, WIDTH: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr):
    """grads.pre, the gradient before silu, and this block's partial sums grads.weight and
    grads.bias (:class:`ConvGrads`), from grads.out.

    Grid as :func:`conv_forward`.
    """
    batch, k = tl.program_id(0) // sizes.directions, tl.program_id(0) % sizes.directions
    kind = tl.load(conv.kinds + k)
    block = tl.program_id(1)
    steps = block * BLOCK_L + tl.arange(0, BLOCK_L)
    e = tl.program_id(2) * BLOCK_E + tl.arange(0, BLOCK_E)
    e_ok = e < sizes.channels
    x_base = conv.x + batch.to(tl.int64) * sizes.x_stride_b
    pre = _pre_activation(conv, sizes, x_base, k, kind, steps, e, e_ok, WIDTH, BLOCK_L, BLOCK_E)
    inside = (steps < sizes.length)[:, None] & e_ok[None, :]
    row = (batch * sizes.directions + k).to(tl.int64) * sizes.length + position(kind, steps, sizes.length,
                                                                                 sizes.num_slices)
    offsets = row[:, None] * sizes.channels + e[None, :]
    sig = tl.sigmoid(pre)
    grad_pre = tl.load(grads.out + offsets, mask=inside, other=0.0) * sig * (1.0 + pre * (1.0 - sig))
    tl.store(grads.pre + offsets, grad_pre, mask=inside)

    partial = (batch * tl.num_programs(1) + block) * sizes.directions + k
    tl.store(grads.bias + partial * sizes.channels + e, tl.sum(grad_pre, axis=0), mask=e_ok)
    for w in tl.static_range(WIDTH):
        tap = _tap(sizes, x_base, kind, steps, e, e_ok, w, WIDTH)
        tl.store(grads.weight + (partial * WIDTH + w) * sizes.channels + e, tl.sum(grad_pre * tap, axis=0),
                 mask=e_ok)


@triton.jit
def conv_backward_input(conv, grads, sizes, WIDTH: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr):
    """grads.x (B, L, E) at positions j: sum over directions k and taps w of
    weight_k[w] * grads.pre_k at the step s(j) + WIDTH - 1 - w of direction k.

    Grid (B, cdiv(L, BLOCK_L), cdiv(E, BLOCK_E)); the directions are summed in the program.
    """
    batch = tl.program_id(0)
    length, channels, num_slices = sizes.length, sizes.channels, sizes.num_slices
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    e = tl.program_id(2) * BLOCK_E + tl.arange(0, BLOCK_E)
    e_ok = e < channels
    acc = tl.zeros((BLOCK_L, BLOCK_E), tl.float32)
    for k in range(sizes.directions):
        kind = tl.load(conv.kinds + k)
        step = step_of(kind, pos, length, num_slices)
        for w in tl.static_range(WIDTH):
            target = step + (WIDTH - 1) - w
            ok = (target < length) & (pos < length)
            row = (batch * sizes.directions + k).to(tl.int64) * length + position(kind, target, length, num_slices)
            grad = tl.load(grads.pre + row[:, None] * channels + e[None, :], mask=ok[:, None] & e_ok[None, :],
                           other=0.0)
            acc += grad * tl.load(conv.weight + (k * WIDTH + w) * channels + e, mask=e_ok)[None, :]
    offsets = (batch.to(tl.int64) * length + pos)[:, None] * channels + e[None, :]
    tl.store(grads.x + offsets, acc, mask=(pos < length)[:, None] & e_ok[None, :])


# ---------------------------------------------------------------- the selective scan


@triton.jit
def _chunk_inputs(scan, sizes, row0, steps, kind, e, e_ok, n, n_ok, delta_bias):
    """Loads one chunk of a direction at ``steps``: u, softplus(delta + bias) (BLOCK_E, CHUNK),
    B and C (BLOCK_N, CHUNK), the rows (row0 + sequence position) and which steps exist (zeros
    past the end)."""
    ok = steps < sizes.length
    rows = row0 + position(kind, steps, sizes.length, sizes.num_slices)
    mask_e = e_ok[:, None] & ok[None, :]
    u = tl.load(scan.u + rows[None, :] * sizes.channels + e[:, None], mask=mask_e, other=0.0)
    delta = tl.load(scan.delta + rows[None, :] * sizes.channels + e[:, None], mask=mask_e, other=0.0)
    delta = tl.where(mask_e, softplus(delta + delta_bias[:, None]), 0.0)
    mask_n = n_ok[:, None] & ok[None, :]
    B = tl.load(scan.B + rows[None, :] * sizes.states + n[:, None], mask=mask_n, other=0.0)
    C = tl.load(scan.C + rows[None, :] * sizes.states + n[:, None], mask=mask_n, other=0.0)
    return u, delta, B, C, rows, ok


@triton.jit
def _direction_parameters(scan, sizes, k, e, e_ok, n, tile_ok):
    """Direction k's A (BLOCK_E, BLOCK_N), D and delta bias (BLOCK_E,)."""
    A = tl.load(scan.A + (k * sizes.states + n[None, :]) * sizes.channels + e[:, None], mask=tile_ok, other=0.0)
    D = tl.load(scan.D + k * sizes.channels + e, mask=e_ok, other=0.0)
    bias = tl.load(scan.delta_bias + k * sizes.channels + e, mask=e_ok, other=0.0)
    return A, D, bias


@triton.jit
def scan_forward(scan, out, sizes,
                 KEEP_STATES: tl.constexpr, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    """out.y[b, j] = sum_k (<h^k, C^k> + D^k u^k) at position j, before the gate.

    Grid (B, cdiv(E, BLOCK_E)); the directions run one after the other in the program and add
    into y (zeroed by the caller), so the sum is deterministic. scan: :class:`ScanTensors`;
    out: :class:`ScanOutputs`, whose ``entering`` receives the state entering every chunk when
    KEEP_STATES; sizes: :class:`ScanSizes`.
    """
    batch = tl.program_id(0)
    length, channels, states, chunks = sizes.length, sizes.channels, sizes.states, sizes.chunks
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    t = tl.arange(0, CHUNK)
    e_ok, n_ok = e < channels, n < states
    tile_ok = e_ok[:, None] & n_ok[None, :]
    for k in range(sizes.directions):
        kind = tl.load(scan.kinds + k)
        A, D, bias = _direction_parameters(scan, sizes, k, e, e_ok, n, tile_ok)
        track = (batch * sizes.directions + k).to(tl.int64)  # this direction of this batch element
        row0 = track * length
        h = tl.zeros((BLOCK_E, BLOCK_N), tl.float32)
        for c in range(chunks):
            if KEEP_STATES:
                saved = (track * chunks + c) * states
                tl.store(out.entering + (saved + n[None, :]) * channels + e[:, None], h, mask=tile_ok)
            u, delta, B, C, rows, ok = _chunk_inputs(scan, sizes, row0, c * CHUNK + t, kind, e, e_ok, n, n_ok, bias)
            decay = tl.exp(delta[:, None, :] * A[:, :, None])  # 1 past the end: the state is kept
            drive = (delta * u)[:, None, :] * B[None, :, :]
            decays, states_t = tl.associative_scan((decay, drive), 2, linear_step)
            states_t += decays * h[:, :, None]
            y = tl.sum(states_t * C[None, :, :], axis=1) + D[:, None] * u
            y_offsets = (batch.to(tl.int64) * length + rows - row0)[None, :] * channels + e[:, None]
            mask = e_ok[:, None] & ok[None, :]
            tl.store(out.y + y_offsets, tl.load(out.y + y_offsets, mask=mask, other=0.0) + y, mask=mask)
            h = last_step(states_t, t, CHUNK)


@triton.jit
def _states_before(scan, sizes, row0, steps, kind, e, e_ok, n, n_ok, bias, A, h0, t):
    """The state entering each step of a chunk, (BLOCK_E, BLOCK_N, CHUNK): h0 at its first
    step, else the scan of the steps before it. An exclusive scan, not h_t - drive_t, which
    cancels where the drive dwarfs the decayed state."""
    earlier = tl.maximum(steps - 1, 0)  # step 0 stands in for step -1, whose values are not used
    u, delta, B, _, _, _ = _chunk_inputs(scan, sizes, row0, earlier, kind, e, e_ok, n, n_ok, bias)
    first = t[None, None, :] == 0
    decay = tl.where(first, 1.0, tl.exp(delta[:, None, :] * A[:, :, None]))
    drive = tl.where(first, 0.0, (delta * u)[:, None, :] * B[None, :, :])
    decays, states = tl.associative_scan((decay, drive), 2, linear_step)
    return states + decays * h0[:, :, None]


@triton.jit
def scan_backward(scan, entering_ptr, grads, sizes,
                  CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    """Gradients of :func:`scan_forward`, one direction per program, chunks last to first.

    Grid (B, cdiv(E, BLOCK_E), K). Each chunk's states are recomputed from the saved entering
    state (B, K, chunks, N, E); the adjoint G_t = dL/dh_t + a_{t+1} G_{t+1} is a reverse scan.
    scan: :class:`ScanTensors`; grads: :class:`ScanGrads` (grads.A and grads.D are this
    program's sums); sizes: :class:`ScanSizes`.
    """
    batch, k = tl.program_id(0), tl.program_id(2)
    length, channels, states, chunks = sizes.length, sizes.channels, sizes.states, sizes.chunks
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    t = tl.arange(0, CHUNK)
    e_ok, n_ok = e < channels, n < states
    tile_ok = e_ok[:, None] & n_ok[None, :]
    kind = tl.load(scan.kinds + k)
    A, D, bias = _direction_parameters(scan, sizes, k, e, e_ok, n, tile_ok)
    track = (batch * sizes.directions + k).to(tl.int64)
    row0 = track * length
    grad_h_next = tl.zeros((BLOCK_E, BLOCK_N), tl.float32)  # dL/dh at the last step of this chunk, from later
    grad_A = tl.zeros((BLOCK_E, BLOCK_N), tl.float32)
    grad_D = tl.zeros((BLOCK_E,), tl.float32)
    for back in range(chunks):
        c = chunks - 1 - back
        saved = (track * chunks + c) * states
        h0 = tl.load(entering_ptr + (saved + n[None, :]) * channels + e[:, None], mask=tile_ok, other=0.0)
        steps = c * CHUNK + t
        u, delta, B, C, rows, ok = _chunk_inputs(scan, sizes, row0, steps, kind, e, e_ok, n, n_ok, bias)
        before = _states_before(scan, sizes, row0, steps, kind, e, e_ok, n, n_ok, bias, A, h0, t)
        decay = tl.exp(delta[:, None, :] * A[:, :, None])
        h = decay * before + (delta * u)[:, None, :] * B[None, :, :]

        mask = e_ok[:, None] & ok[None, :]
        y_offsets = (batch.to(tl.int64) * length + rows - row0)[None, :] * channels + e[:, None]
        grad_y = tl.load(grads.y + y_offsets, mask=mask, other=0.0)
        # the decay of the step after each one, inside this chunk (the chunk's last step gets
        # the later chunks' share through grad_h_next instead)
        _, delta_next, _, _, _, _ = _chunk_inputs(scan, sizes, row0, steps + 1, kind, e, e_ok, n, n_ok, bias)
        decay_next = tl.where(t[None, None, :] < CHUNK - 1, tl.exp(delta_next[:, None, :] * A[:, :, None]), 0.0)
        grad_h = grad_y[:, None, :] * C[None, :, :]
        grad_h += tl.where(t[None, None, :] == CHUNK - 1, grad_h_next[:, :, None], 0.0)
        _, G = tl.associative_scan((decay_next, grad_h), 2, linear_step, reverse=True)
        grad_h_next = first_step(G * decay, t)

        grad_decay_arg = G * decay * before  # dL/d(delta_t A) = G_t a_t h_{t-1}
        grad_A += tl.sum(grad_decay_arg * delta[:, None, :], axis=2)
        G_dot_B = tl.sum(G * B[None, :, :], axis=1)
        grad_u = delta * G_dot_B + D[:, None] * grad_y
        grad_softplus = u * G_dot_B + tl.sum(grad_decay_arg * A[:, :, None], axis=1)
        raw = tl.load(scan.delta + rows[None, :] * channels + e[:, None], mask=mask, other=0.0)
        grad_delta = grad_softplus * tl.sigmoid(raw + bias[:, None])
        grad_D += tl.sum(grad_y * u, axis=1)
        tl.store(grads.u + rows[None, :] * channels + e[:, None], grad_u, mask=mask)
        tl.store(grads.delta + rows[None, :] * channels + e[:, None], grad_delta, mask=mask)

        mask_n = n_ok[:, None] & ok[None, :]
        bn_offsets = rows[None, :] * states + n[:, None]
        tl.atomic_add(grads.B + bn_offsets, tl.sum(G * (delta * u)[:, None, :], axis=0), mask=mask_n)
        tl.atomic_add(grads.C + bn_offsets, tl.sum(h * grad_y[:, None, :], axis=0), mask=mask_n)
    tl.store(grads.A + (track * states + n[None, :]) * channels + e[:, None], grad_A, mask=tile_ok)
    tl.store(grads.D + track * channels + e, grad_D, mask=e_ok)
