"""Triton kernels of the fused ToM: the causal conv and the selective scan of every direction,
with their backward passes. Loaded lazily by ``triton_tom``; they run compiled on CUDA and,
under ``TRITON_INTERPRET=1``, on the CPU (for tests).

Layouts are those of ``numba_kernels``: channels-last, (batch, [direction,] L, E), with
step s of direction k reading and writing sequence position :func:`position`, so the reverse
and inter-slice orders are never copied. A program owns one batch element and one block of
channels; the scan walks its direction in chunks of ``CHUNK`` steps, solves each chunk with
``tl.associative_scan`` over the (channel, state, step) tile and carries the state to the next.
"""

from __future__ import annotations

import triton
import triton.language as tl

FORWARD, REVERSE, INTER_SLICE = 0, 1, 2  # the numbering of numba_kernels and tom.DIRECTION_KINDS


@triton.jit
def position(kind, step, length, num_slices):
    """The sequence position that ``step`` of a direction reads and writes.

    With L = S*P (S slices of P positions, slice-major): forward j = s; reverse j = L-1-s;
    inter-slice j = (s mod S)*P + s div S.
    """
    inter_slice = (step % num_slices) * (length // num_slices) + step // num_slices
    return tl.where(kind == 0, step, tl.where(kind == 1, length - 1 - step, inter_slice))


@triton.jit
def step_of(kind, pos, length, num_slices):
    """The inverse of :func:`position`: the step at which a direction visits ``pos``."""
    per_slice = length // num_slices
    inter_slice = (pos % per_slice) * num_slices + pos // per_slice
    return tl.where(kind == 0, pos, tl.where(kind == 1, length - 1 - pos, inter_slice))


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
def _tap(x_base, x_stride_l, kind, steps, length, num_slices, e, e_ok, w, WIDTH: tl.constexpr):
    """x at step s - WIDTH + 1 + w of a direction, for each s of ``steps``: (BLOCK_L, BLOCK_E),
    zero before the first step."""
    source = steps - (WIDTH - 1) + w
    ok = (source >= 0) & (source < length)
    rows = position(kind, source, length, num_slices).to(tl.int64)
    return tl.load(x_base + rows[:, None] * x_stride_l + e[None, :], mask=ok[:, None] & e_ok[None, :], other=0.0)


@triton.jit
def _pre_activation(x_base, x_stride_l, weight_ptr, bias_ptr, k, kind, steps, length, num_slices, channels, e, e_ok,
                    WIDTH: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr):
    """bias_k + sum_w weight_k[w] * tap_w: the conv before silu, (BLOCK_L, BLOCK_E)."""
    acc = tl.zeros((BLOCK_L, BLOCK_E), tl.float32) + tl.load(bias_ptr + k * channels + e, mask=e_ok)[None, :]
    for w in tl.static_range(WIDTH):
        tap = _tap(x_base, x_stride_l, kind, steps, length, num_slices, e, e_ok, w, WIDTH)
        acc += tap * tl.load(weight_ptr + (k * WIDTH + w) * channels + e, mask=e_ok)[None, :]
    return acc


@triton.jit
def conv_forward(x_ptr, x_stride_b, x_stride_l, weight_ptr, bias_ptr, kinds_ptr, out_ptr,
                 length, channels, num_slices, directions,
                 WIDTH: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr):
    """out[b, k, position(s)] = silu(bias_k + sum_w weight_k[w] x[position(s - WIDTH + 1 + w)]).

    Grid (B * K, cdiv(L, BLOCK_L), cdiv(E, BLOCK_E)). x is (B, L, E) with unit channel stride;
    weight (K, WIDTH, E), bias (K, E), out (B, K, L, E).
    """
    batch, k = tl.program_id(0) // directions, tl.program_id(0) % directions
    kind = tl.load(kinds_ptr + k)
    steps = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    e = tl.program_id(2) * BLOCK_E + tl.arange(0, BLOCK_E)
    e_ok = e < channels
    x_base = x_ptr + batch.to(tl.int64) * x_stride_b
    pre = _pre_activation(x_base, x_stride_l, weight_ptr, bias_ptr, k, kind, steps, length, num_slices, channels, e,
                          e_ok, WIDTH, BLOCK_L, BLOCK_E)
    row = (batch * directions + k).to(tl.int64) * length + position(kind, steps, length, num_slices)
    tl.store(out_ptr + row[:, None] * channels + e[None, :], silu(pre),
             mask=(steps < length)[:, None] & e_ok[None, :])


@triton.jit
def conv_backward_weights(x_ptr, x_stride_b, x_stride_l, weight_ptr, bias_ptr, kinds_ptr, grad_out_ptr,
                          grad_pre_ptr, grad_weight_ptr, grad_bias_ptr,
                          length, channels, num_slices, directions,
                          WIDTH: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr):
    """The gradient before silu, grad_pre (B, K, L, E), and this block's partial sums of the
    weight and bias gradients, (B, L blocks, K, WIDTH, E) and (B, L blocks, K, E).

    Grid as :func:`conv_forward`.
    """
    batch, k = tl.program_id(0) // directions, tl.program_id(0) % directions
    kind = tl.load(kinds_ptr + k)
    block = tl.program_id(1)
    steps = block * BLOCK_L + tl.arange(0, BLOCK_L)
    e = tl.program_id(2) * BLOCK_E + tl.arange(0, BLOCK_E)
    e_ok = e < channels
    x_base = x_ptr + batch.to(tl.int64) * x_stride_b
    pre = _pre_activation(x_base, x_stride_l, weight_ptr, bias_ptr, k, kind, steps, length, num_slices, channels, e,
                          e_ok, WIDTH, BLOCK_L, BLOCK_E)
    inside = (steps < length)[:, None] & e_ok[None, :]
    row = (batch * directions + k).to(tl.int64) * length + position(kind, steps, length, num_slices)
    offsets = row[:, None] * channels + e[None, :]
    sig = tl.sigmoid(pre)
    grad_pre = tl.load(grad_out_ptr + offsets, mask=inside, other=0.0) * sig * (1.0 + pre * (1.0 - sig))
    tl.store(grad_pre_ptr + offsets, grad_pre, mask=inside)

    partial = (batch * tl.num_programs(1) + block) * directions + k
    tl.store(grad_bias_ptr + partial * channels + e, tl.sum(grad_pre, axis=0), mask=e_ok)
    for w in tl.static_range(WIDTH):
        tap = _tap(x_base, x_stride_l, kind, steps, length, num_slices, e, e_ok, w, WIDTH)
        tl.store(grad_weight_ptr + (partial * WIDTH + w) * channels + e, tl.sum(grad_pre * tap, axis=0), mask=e_ok)


@triton.jit
def conv_backward_input(grad_pre_ptr, weight_ptr, kinds_ptr, grad_x_ptr,
                        length, channels, num_slices, directions,
                        WIDTH: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr):
    """grad_x (B, L, E) at positions j: sum over directions k and taps w of
    weight_k[w] * grad_pre_k at the step s(j) + WIDTH - 1 - w of direction k.

    Grid (B, cdiv(L, BLOCK_L), cdiv(E, BLOCK_E)); the directions are summed in the program.
    """
    batch = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    e = tl.program_id(2) * BLOCK_E + tl.arange(0, BLOCK_E)
    e_ok = e < channels
    acc = tl.zeros((BLOCK_L, BLOCK_E), tl.float32)
    for k in range(directions):
        kind = tl.load(kinds_ptr + k)
        step = step_of(kind, pos, length, num_slices)
        for w in tl.static_range(WIDTH):
            target = step + (WIDTH - 1) - w
            ok = (target < length) & (pos < length)
            row = (batch * directions + k).to(tl.int64) * length + position(kind, target, length, num_slices)
            grad = tl.load(grad_pre_ptr + row[:, None] * channels + e[None, :], mask=ok[:, None] & e_ok[None, :],
                           other=0.0)
            acc += grad * tl.load(weight_ptr + (k * WIDTH + w) * channels + e, mask=e_ok)[None, :]
    offsets = (batch.to(tl.int64) * length + pos)[:, None] * channels + e[None, :]
    tl.store(grad_x_ptr + offsets, acc, mask=(pos < length)[:, None] & e_ok[None, :])


# ---------------------------------------------------------------- the selective scan


@triton.jit
def _chunk_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, row0, steps, kind, length, num_slices, channels, states,
                  e, e_ok, n, n_ok, delta_bias):
    """Loads one chunk of a direction at ``steps``: u, softplus(delta + bias) (BLOCK_E, CHUNK),
    B and C (BLOCK_N, CHUNK), the rows (row0 + sequence position) and which steps exist."""
    ok = steps < length
    rows = row0 + position(kind, steps, length, num_slices)
    mask_e = e_ok[:, None] & ok[None, :]
    u = tl.load(u_ptr + rows[None, :] * channels + e[:, None], mask=mask_e, other=0.0)
    delta = tl.load(delta_ptr + rows[None, :] * channels + e[:, None], mask=mask_e, other=0.0)
    delta = tl.where(mask_e, softplus(delta + delta_bias[:, None]), 0.0)
    mask_n = n_ok[:, None] & ok[None, :]
    B = tl.load(B_ptr + rows[None, :] * states + n[:, None], mask=mask_n, other=0.0)
    C = tl.load(C_ptr + rows[None, :] * states + n[:, None], mask=mask_n, other=0.0)
    return u, delta, B, C, rows, ok


@triton.jit
def scan_forward(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, kinds_ptr, y_ptr, entering_ptr,
                 length, channels, states, num_slices, directions, chunks,
                 KEEP_STATES: tl.constexpr, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    """y[b, j] = sum_k (<h^k, C^k> + D^k u^k) at position j, before the gate.

    Grid (B, cdiv(E, BLOCK_E)); the directions run one after the other in the program and add
    into y (zeroed by the caller), so the sum is deterministic. u, delta (B, K, L, E); A (K, N, E);
    B, C (B, K, L, N); D, bias (K, E); y (B, L, E); entering (B, K, chunks, N, E) receives the
    state entering every chunk when KEEP_STATES.
    """
    batch = tl.program_id(0)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    t = tl.arange(0, CHUNK)
    e_ok, n_ok = e < channels, n < states
    tile_ok = e_ok[:, None] & n_ok[None, :]
    for k in range(directions):
        kind = tl.load(kinds_ptr + k)
        A = tl.load(A_ptr + (k * states + n[None, :]) * channels + e[:, None], mask=tile_ok, other=0.0)
        D = tl.load(D_ptr + k * channels + e, mask=e_ok, other=0.0)
        bias = tl.load(bias_ptr + k * channels + e, mask=e_ok, other=0.0)
        track = (batch * directions + k).to(tl.int64)  # this direction of this batch element
        row0 = track * length
        h = tl.zeros((BLOCK_E, BLOCK_N), tl.float32)
        for c in range(chunks):
            if KEEP_STATES:
                saved = (track * chunks + c) * states
                tl.store(entering_ptr + (saved + n[None, :]) * channels + e[:, None], h, mask=tile_ok)
            u, delta, B, C, rows, ok = _chunk_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, row0, c * CHUNK + t, kind,
                                                     length, num_slices, channels, states, e, e_ok, n, n_ok, bias)
            decay = tl.exp(delta[:, None, :] * A[:, :, None])  # 1 past the end: the state is kept
            drive = (delta * u)[:, None, :] * B[None, :, :]
            decays, states_t = tl.associative_scan((decay, drive), 2, linear_step)
            states_t += decays * h[:, :, None]
            y = tl.sum(states_t * C[None, :, :], axis=1) + D[:, None] * u
            y_offsets = (batch.to(tl.int64) * length + rows - row0)[None, :] * channels + e[:, None]
            mask = e_ok[:, None] & ok[None, :]
            tl.store(y_ptr + y_offsets, tl.load(y_ptr + y_offsets, mask=mask, other=0.0) + y, mask=mask)
            h = last_step(states_t, t, CHUNK)


@triton.jit
def scan_backward(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, kinds_ptr, entering_ptr, grad_y_ptr,
                  grad_u_ptr, grad_delta_ptr, grad_A_ptr, grad_D_ptr, grad_B_ptr, grad_C_ptr,
                  length, channels, states, num_slices, directions, chunks,
                  CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    """Gradients of :func:`scan_forward`, one direction per program, chunks last to first.

    Grid (B, cdiv(E, BLOCK_E), K). Each chunk's states are recomputed from the saved entering
    state; the adjoint G_t = dL/dh_t + a_{t+1} G_{t+1} is a reverse scan, and a_t h_{t-1} = h_t -
    (delta_t u_t) B_t. grad_u, grad_delta (before softplus) (B, K, L, E) are written; grad_A
    (B, K, N, E) and grad_D (B, K, E) are this program's sums; grad_B, grad_C (B, K, L, N),
    zeroed by the caller, receive every channel block's sum atomically.
    """
    batch, k = tl.program_id(0), tl.program_id(2)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    t = tl.arange(0, CHUNK)
    e_ok, n_ok = e < channels, n < states
    tile_ok = e_ok[:, None] & n_ok[None, :]
    kind = tl.load(kinds_ptr + k)
    A = tl.load(A_ptr + (k * states + n[None, :]) * channels + e[:, None], mask=tile_ok, other=0.0)
    D = tl.load(D_ptr + k * channels + e, mask=e_ok, other=0.0)
    bias = tl.load(bias_ptr + k * channels + e, mask=e_ok, other=0.0)
    track = (batch * directions + k).to(tl.int64)
    row0 = track * length
    grad_h_next = tl.zeros((BLOCK_E, BLOCK_N), tl.float32)  # dL/dh at the last step of this chunk, from later
    grad_A = tl.zeros((BLOCK_E, BLOCK_N), tl.float32)
    grad_D = tl.zeros((BLOCK_E,), tl.float32)
    for back in range(chunks):
        c = chunks - 1 - back
        saved = (track * chunks + c) * states
        h0 = tl.load(entering_ptr + (saved + n[None, :]) * channels + e[:, None], mask=tile_ok, other=0.0)
        steps = c * CHUNK + t
        u, delta, B, C, rows, ok = _chunk_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, row0, steps, kind, length,
                                                 num_slices, channels, states, e, e_ok, n, n_ok, bias)
        decay = tl.exp(delta[:, None, :] * A[:, :, None])
        drive = (delta * u)[:, None, :] * B[None, :, :]
        decays, h = tl.associative_scan((decay, drive), 2, linear_step)
        h += decays * h0[:, :, None]

        mask = e_ok[:, None] & ok[None, :]
        y_offsets = (batch.to(tl.int64) * length + rows - row0)[None, :] * channels + e[:, None]
        grad_y = tl.load(grad_y_ptr + y_offsets, mask=mask, other=0.0)
        # the decay of the step after each one, inside this chunk (the chunk's last step gets
        # the later chunks' share through grad_h_next instead)
        _, delta_next, _, _, _, _ = _chunk_inputs(u_ptr, delta_ptr, B_ptr, C_ptr, row0, steps + 1, kind, length,
                                                  num_slices, channels, states, e, e_ok, n, n_ok, bias)
        decay_next = tl.where(t[None, None, :] < CHUNK - 1, tl.exp(delta_next[:, None, :] * A[:, :, None]), 0.0)
        grad_h = grad_y[:, None, :] * C[None, :, :]
        grad_h += tl.where(t[None, None, :] == CHUNK - 1, grad_h_next[:, :, None], 0.0)
        _, G = tl.associative_scan((decay_next, grad_h), 2, linear_step, reverse=True)
        grad_h_next = first_step(G * decay, t)

        grad_decay_arg = G * (h - drive)  # dL/d(delta_t A) = G_t a_t h_{t-1}
        grad_A += tl.sum(grad_decay_arg * delta[:, None, :], axis=2)
        G_dot_B = tl.sum(G * B[None, :, :], axis=1)
        grad_u = delta * G_dot_B + D[:, None] * grad_y
        grad_softplus = u * G_dot_B + tl.sum(grad_decay_arg * A[:, :, None], axis=1)
        raw = tl.load(delta_ptr + rows[None, :] * channels + e[:, None], mask=mask, other=0.0)
        grad_delta = grad_softplus * tl.sigmoid(raw + bias[:, None])
        grad_D += tl.sum(grad_y * u, axis=1)
        tl.store(grad_u_ptr + rows[None, :] * channels + e[:, None], grad_u, mask=mask)
        tl.store(grad_delta_ptr + rows[None, :] * channels + e[:, None], grad_delta, mask=mask)

        mask_n = n_ok[:, None] & ok[None, :]
        bn_offsets = rows[None, :] * states + n[:, None]
        tl.atomic_add(grad_B_ptr + bn_offsets, tl.sum(G * (delta * u)[:, None, :], axis=0), mask=mask_n)
        tl.atomic_add(grad_C_ptr + bn_offsets, tl.sum(h * grad_y[:, None, :], axis=0), mask=mask_n)
    tl.store(grad_A_ptr + (track * states + n[None, :]) * channels + e[:, None], grad_A, mask=tile_ok)
    tl.store(grad_D_ptr + track * channels + e, grad_D, mask=e_ok)
