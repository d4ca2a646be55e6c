"""Pure-PyTorch selective scan, exact to mamba_ssm's ``selective_scan_ref``.

The recurrence, per channel ``d`` and state ``n``::

    delta_t = softplus(delta_t + delta_bias)          (if delta_softplus)
    h_t     = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t     = <h_t, C_t> + D * u_t
    y       = y * silu(z)                              (if z is given)

The reference builds (batch, d, L, n) tensors for the whole sequence. Here the sequence
is cut into chunks; each chunk is solved with a log-depth parallel scan and hands its
last state to the next chunk, so memory grows with the chunk, not with L. For autograd only
the inputs and the state entering each chunk are kept; the backward pass recomputes one
chunk at a time.

This is the readable reference and the fallback on any device. On a CPU, flushing denormals
(fp32 values below 1.2e-38, which decaying states reach) is per thread, and PyTorch's worker
threads cannot be reached: on them such a scan runs many times longer than on one flushing
thread (the figures: ``benchmarks/results/cpu-2core/README.md``). So a CPU call runs on the
calling thread alone, with denormals flushed, and restores the thread count and that thread's
mode on return. The CPU default, the fused numba path (``operators.numba_tom``), is parallel and
flushes on every thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

# Steps per chunk, by device type. On a 2-core CPU 64 was fastest. On a GPU each chunk costs
# about 30 kernel launches whatever its size, so chunks are longer; 512 is chosen, not yet
# measured (benchmarks/gpu_check.py times 64 to 2048 on the GPU it runs on).
CHUNK_SIZES = {"cpu": 64, "cuda": 512}
DEFAULT_CHUNK_SIZE = CHUNK_SIZES["cpu"]


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int | None = None,
) -> Tensor:
    """Selective scan with the semantics and argument order of ``selective_scan_ref``.

    Args:
        u: input, (batch, d, L).
        delta: time steps before bias and softplus, (batch, d, L).
        A: state matrix (diagonal), (d, n). Real-valued.
        B: input-dependent input matrix, (batch, n, L).
        C: input-dependent output matrix, (batch, n, L).
        D: skip weight, (d,).
        z: gate, (batch, d, L).
        delta_bias: added to ``delta`` before softplus, (d,).
        delta_softplus: apply softplus to ``delta``.
        chunk_size: sequence positions solved together; bounds memory. None: ``CHUNK_SIZES``
            of the device type (64 on a CPU, 512 on CUDA).

    Returns:
        y, (batch, d, L), in the dtype of ``u``. All arithmetic runs in fp32, also under
        autocast.
    """
    _check_shapes(u, delta, A, B, C)
    if chunk_size is None:
        chunk_size = CHUNK_SIZES.get(u.device.type, DEFAULT_CHUNK_SIZE)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    with torch.autocast(device_type=u.device.type, enabled=False), _single_flushing_thread(u.device):
        u32, delta32 = u.float(), delta.float()
        if delta_bias is not None:
            delta32 = delta32 + delta_bias.float()[:, None]
        if delta_softplus:
            delta32 = F.softplus(delta32)
        y = _chunked_scan(u32, delta32, A.float(), B.float(), C.float(), chunk_size)
        if D is not None:
            y = y + u32 * D.float()[:, None]
        if z is not None:
            y = y * F.silu(z.float())
    return y.to(u.dtype)


class _OneIntraOpThread:
    """Runs its callers on one intra-op thread. torch's count is partly per thread (OpenMP's)
    and partly process-wide (the count a thread started later takes), so each caller restores,
    on leaving, the count from before the first caller entered: restoring what it found itself
    would leave a caller that entered while another was inside, and every thread started after
    it, on one. A caller still inside when another leaves may then scan on more threads: slower
    on denormals, the same results."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._before = 1

    def __enter__(self) -> None:
        with self._lock:
            if self._inside == 0:
                self._before = torch.get_num_threads()
            self._inside += 1
        torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._inside -= 1
            torch.set_num_threads(self._before)


ONE_INTRA_OP_THREAD = _OneIntraOpThread()


@contextlib.contextmanager
def _single_flushing_thread(device: torch.device) -> Iterator[None]:
    """On a CPU: one intra-op thread, and this thread flushes denormals; both restored afterwards."""
    if device.type != "cpu":
        yield
        return
    was_flushing = bool((torch.tensor([1e-39]) * 1.0).item() == 0.0)  # torch has no getter
    with ONE_INTRA_OP_THREAD:
        torch.set_flush_denormal(True)
        try:
            yield
        finally:
            torch.set_flush_denormal(was_flushing)


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, d, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, d, length = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (d={d}, n); got {tuple(A.shape)}")
    expected = (batch, A.shape[1], length)
    for name, mat in (("B", B), ("C", C)):
        if tuple(mat.shape) != expected:
            raise ValueError(f"{name} must be (batch, n, L) = {expected}; got {tuple(mat.shape)}")


def _chunked_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int) -> Tensor:
    """Runs the recurrence chunk by chunk, carrying the state h (batch, d, n)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C)):
        return _ChunkedScan.apply(u, delta, A, B, C, chunk_size)
    y, _ = _forward_chunks(u, delta, A, B, C, chunk_size)
    return y


def _chunk_windows(length: int, chunk_size: int) -> list[slice]:
    return [slice(start, start + chunk_size) for start in range(0, length, chunk_size)]


def _forward_chunks(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int):
    """y (batch, d, L) and the state entering each chunk, (chunks, batch, d, n)."""
    batch, d, length = u.shape
    windows = _chunk_windows(length, chunk_size)
    y = torch.empty_like(u)
    entering = u.new_empty(len(windows), batch, d, A.shape[1])
    h = u.new_zeros(batch, d, A.shape[1])
    for k, w in enumerate(windows):
        entering[k] = h
        y[..., w], h = _scan_chunk(h, u[..., w], delta[..., w], A, B[..., w], C[..., w])
    return y, entering


class _ChunkedScan(torch.autograd.Function):
    """Saves the inputs and the state entering each chunk; the backward pass recomputes one
    chunk at a time, last to first, passing the state's gradient back to the chunk before."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk_size):
        with torch.no_grad():
            y, entering = _forward_chunks(u, delta, A, B, C, chunk_size)
        ctx.save_for_backward(u, delta, A, B, C, entering)
        ctx.chunk_size = chunk_size
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, entering = ctx.saved_tensors
        with _single_flushing_thread(u.device):
            return _ChunkedScan._backward(ctx, u, delta, A, B, C, entering, grad_y)

    @staticmethod
    def _backward(ctx, u, delta, A, B, C, entering, grad_y):
        grads = [torch.zeros_like(t) for t in (u, delta, B, C)]
        grad_A = torch.zeros_like(A)
        grad_h = torch.zeros_like(entering[0])
        windows = _chunk_windows(u.shape[-1], ctx.chunk_size)
        for k in reversed(range(len(windows))):
            w = windows[k]
            grad_h, g_u, g_delta, g_A, g_B, g_C = _scan_chunk_backward(
                entering[k], u[..., w], delta[..., w], A, B[..., w], C[..., w], grad_y[..., w], grad_h
            )
            for full, part in zip(grads, (g_u, g_delta, g_B, g_C)):
                full[..., w] = part
            grad_A += g_A
        grad_u, grad_delta, grad_B, grad_C = grads
        return grad_u, grad_delta, grad_A, grad_B, grad_C, None


def _scan_chunk(h0: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk of T steps. Shapes: h0 (b, d, n); u, delta (b, d, T); A (d, n); B, C (b, n, T)."""
    _, h = _chunk_states(h0, u, delta, A, B)
    y = torch.einsum("bdtn,bnt->bdt", h, C)
    return y, h[:, :, -1]


def _chunk_states(h0: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """The decays exp(delta_t A) and the states h_t of one chunk, both (b, d, T, n)."""
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])
    drive = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # delta_t B_t u_t
    # fold the carried state into the first step: h_0 = decay_0 * h0 + drive_0
    first = decay[:, :, :1] * h0.unsqueeze(2) + drive[:, :, :1]
    return decay, linear_recurrence(decay, torch.cat([first, drive[:, :, 1:]], dim=2))


def _scan_chunk_backward(h0, u, delta, A, B, C, grad_y, grad_h_last):
    """Gradients of :func:`_scan_chunk` w.r.t. (h0, u, delta, A, B, C), written out.

    The adjoint of h_t = a_t h_{t-1} + b_t is the same recurrence run backwards:
    G_t = dL/dh_t + a_{t+1} G_{t+1}; then dL/db_t = G_t and dL/da_t = G_t h_{t-1}.
    """
    B_t, C_t = B.transpose(1, 2).unsqueeze(1), C.transpose(1, 2).unsqueeze(1)  # (b, 1, T, n)
    decay, h = _chunk_states(h0, u, delta, A, B)
    h_before = torch.cat([h0.unsqueeze(2), h[:, :, :-1]], dim=2)  # h_{t-1}

    grad_h = grad_y.unsqueeze(-1) * C_t  # from y_t = <h_t, C_t>
    grad_h = torch.cat([grad_h[:, :, :-1], grad_h[:, :, -1:] + grad_h_last.unsqueeze(2)], dim=2)
    next_decay = torch.cat([decay[:, :, 1:], torch.zeros_like(decay[:, :, :1])], dim=2)  # a_{t+1}
    G = linear_recurrence(next_decay, grad_h, reverse=True)

    grad_delta_a = G * h_before * decay  # dL/d(delta_t A)
    grad_C = torch.einsum("bdtn,bdt->bnt", h, grad_y)
    grad_B = torch.einsum("bdtn,bdt->bnt", G, delta * u)
    G_dot_B = (G * B_t).sum(-1)
    grad_u = delta * G_dot_B
    grad_delta = u * G_dot_B + (grad_delta_a * A[:, None, :]).sum(-1)
    grad_A = torch.einsum("bdtn,bdt->dn", grad_delta_a, delta)
    grad_h0 = G[:, :, 0] * decay[:, :, 0]
    return grad_h0, grad_u, grad_delta, grad_A, grad_B, grad_C


def linear_recurrence(a: Tensor, b: Tensor, reverse: bool = False) -> Tensor:
    """Solves ``h_t = a_t * h_{t-1} + b_t`` with ``h_{-1} = 0`` along dim -2.

    With ``reverse`` it solves ``h_t = a_t * h_{t+1} + b_t`` from the end instead.
    Hillis-Steele scan: after the step with offset k, each (a_t, b_t) describes the map
    from h_{t-2k} to h_t. log2(T) steps, every product of decays stays <= 1, so it is
    numerically stable for any decay.
    """
    length = a.shape[-2]
    offset = 1
    while offset < length:
        later, earlier = slice(offset, None), slice(None, -offset)
        target, source = (earlier, later) if reverse else (later, earlier)
        b_next = b.clone()
        b_next[..., target, :].addcmul_(a[..., target, :], b[..., source, :])
        if 2 * offset < length:  # the last step needs no decays
            a_next = a.clone()
            a_next[..., target, :].mul_(a[..., source, :])
            a = a_next
        b = b_next
        offset *= 2
    return b
