"""The pure selective scan against a plain per-step loop written from the math."""

import pytest
import torch

from nnunetv2_segresmamba.operators.selective_scan import linear_recurrence, selective_scan
from tests.reference import reference_scan

ATOL = 1e-5  # fp32 outputs
GRAD_ATOL = 1e-4  # fp32 gradients, summed over up to a few hundred steps


def make_inputs(batch, d, n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "u": (batch, d, length), "delta": (batch, d, length), "A": (d, n), "B": (batch, n, length),
        "C": (batch, n, length), "D": (d,), "z": (batch, d, length), "delta_bias": (d,),
    }
    inputs = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    inputs["A"] = -torch.rand(d, n, generator=g) * 4 - 0.1
    return {k: v.requires_grad_() for k, v in inputs.items()}


@pytest.mark.parametrize("length,chunk_size", [(1, 4), (7, 4), (33, 8), (50, 16), (129, 64), (100, 256)])
def test_outputs_and_gradients_match_loop(length, chunk_size):
    inputs = make_inputs(batch=2, d=5, n=3, length=length)
    expected = reference_scan(**inputs)
    ours = selective_scan(**inputs, delta_softplus=True, chunk_size=chunk_size)
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=1e-5)

    weights = torch.randn_like(expected)
    grads_ref = torch.autograd.grad((expected * weights).sum(), list(inputs.values()))
    grads_ours = torch.autograd.grad((ours * weights).sum(), list(inputs.values()))
    for name, g_ref, g_ours in zip(inputs, grads_ref, grads_ours):
        torch.testing.assert_close(g_ours, g_ref, atol=GRAD_ATOL, rtol=1e-4, msg=f"gradient of {name}")


def test_optional_arguments_follow_reference():
    x = make_inputs(batch=1, d=3, n=2, length=9)
    expected_plain = reference_scan(
        x["u"], x["delta"] - 0.0, x["A"], x["B"], x["C"], torch.zeros(3), torch.full_like(x["z"], 50.0),
        torch.zeros(3),
    )
    # no D, no z, no bias: softplus only, silu(50) == 50 undone below
    ours = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], delta_softplus=True, chunk_size=4)
    torch.testing.assert_close(ours * 50.0, expected_plain, atol=1e-4, rtol=1e-5)


def test_linear_recurrence_matches_loop_at_odd_length():
    a, b = torch.rand(2, 3, 13, 4), torch.randn(2, 3, 13, 4)
    h, expected = torch.zeros(2, 3, 4), []
    for t in range(13):
        h = a[:, :, t] * h + b[:, :, t]
        expected.append(h)
    torch.testing.assert_close(linear_recurrence(a, b), torch.stack(expected, dim=2))


def test_reverse_linear_recurrence_matches_backward_loop_at_odd_length():
    a, b = torch.rand(2, 3, 13, 4), torch.randn(2, 3, 13, 4)
    h, expected = torch.zeros(2, 3, 4), []
    for t in reversed(range(13)):
        h = a[:, :, t] * h + b[:, :, t]
        expected.insert(0, h)
    torch.testing.assert_close(linear_recurrence(a, b, reverse=True), torch.stack(expected, dim=2))


def test_scan_runs_in_fp32_under_bf16_autocast():
    x = make_inputs(batch=1, d=4, n=3, length=20)
    bf16 = {k: v.detach().bfloat16() if k in ("u", "delta", "z") else v.detach() for k, v in x.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = selective_scan(**bf16, delta_softplus=True, chunk_size=8)
    assert out.dtype == torch.bfloat16
    expected = reference_scan(**{k: v.float() for k, v in bf16.items()})
    # only the output is rounded to bf16 (relative error <= 2^-9); a scan run in bf16 errs by ~3e-2
    torch.testing.assert_close(out.float(), expected, atol=1e-3, rtol=4e-3)


def test_shape_errors_name_the_argument():
    x = make_inputs(batch=1, d=4, n=3, length=6)
    x["B"] = x["B"][..., :5]
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(**x)


def test_long_forward_is_memory_bounded():
    """L=262144, d=96, n=16: a (L, d, n) float tensor alone would be 1.6 GB."""
    length, d, n = 262144, 96, 16
    u = torch.randn(1, d, length)
    budget = length * d * n * 4 // 4  # a quarter of one (L, d, n) tensor; (L, d) ones are 100 MB
    peak = _peak_traced_bytes(
        lambda: selective_scan(u, u, -torch.rand(d, n), torch.randn(1, n, length), torch.randn(1, n, length))
    )
    assert peak < budget, f"peak allocation {peak / 2**20:.0f} MiB exceeds {budget / 2**20:.0f} MiB"


def test_forward_backward_memory_is_bounded():
    """With autograd only the inputs and chunk-entry states are kept, never (L, d, n) tensors."""
    length, d, n = 65536, 32, 64
    inputs = [torch.randn(1, d, length), torch.randn(1, d, length), -torch.rand(d, n),
              torch.randn(1, n, length), torch.randn(1, n, length)]
    inputs = [t.requires_grad_() for t in inputs]
    budget = length * d * n * 4 // 2  # half of one (L, d, n) tensor; (L, n) inputs and grads take ~64 MiB

    def forward_backward():
        selective_scan(*inputs, delta_softplus=True).sum().backward()

    peak = _peak_traced_bytes(forward_backward, grad=True)
    assert peak < budget, f"peak allocation {peak / 2**20:.0f} MiB exceeds {budget / 2**20:.0f} MiB"
    assert all(t.grad is not None for t in inputs)


def _peak_traced_bytes(fn, grad=False):
    """Largest sum of live tensor bytes, tracked through the torch dispatcher."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Tracker(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live, self.peak = {}, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    key = storage.data_ptr()
                    if key not in self.live:
                        self.live[key] = storage.nbytes()
                        import weakref

                        weakref.finalize(storage, self.live.pop, key, None)
            self.peak = max(self.peak, sum(self.live.values()))
            return out

    with torch.set_grad_enabled(grad), Tracker() as tracker:
        fn()
    return tracker.peak


def test_concurrent_cpu_scans_restore_the_process_thread_count():
    """The pure CPU scan runs its callers on one intra-op thread. When two that overlapped have
    left (the first before the second), this thread and a thread started afterwards must both
    have the count of before."""
    import threading

    from nnunetv2_segresmamba.operators.selective_scan import ONE_INTRA_OP_THREAD

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    second_inside, first_left = threading.Event(), threading.Event()

    def second():
        with ONE_INTRA_OP_THREAD:
            second_inside.set()
            first_left.wait(10)

    def count_in_a_new_thread():
        counts = []
        thread = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
        thread.start()
        thread.join(10)
        return counts[0]

    try:
        thread = threading.Thread(target=second)
        with ONE_INTRA_OP_THREAD:
            thread.start()
            assert second_inside.wait(10)
        first_left.set()
        thread.join(10)
        assert torch.get_num_threads() == 2
        assert count_in_a_new_thread() == 2
    finally:
        torch.set_num_threads(previous)
