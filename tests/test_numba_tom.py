"""What only the fused CPU ToM (numba) has: exact results with any thread count, denormal
inputs at full speed, and its backend selection. The kernels themselves are checked against
plain references in test_fused_tom.py, with Triton's."""

import sys
import time

import pytest
import torch

from nnunetv2_segresmamba.operators import backends
from nnunetv2_segresmamba.operators.numba_tom import fused_scan
from tests.reference import assert_outputs_and_gradients_match, reference_fused_scan, scan_inputs


@pytest.mark.parametrize("threads", [1, 3])
def test_fused_scan_is_exact_with_any_thread_count(threads):
    inputs = scan_inputs(2, 3, 40, 64, states=16, seed=1)
    expected = reference_fused_scan(**inputs, kinds=(0, 1, 2), num_slices=4)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = fused_scan(**inputs, kinds=(0, 1, 2), num_slices=4, chunk_size=16)
        assert_outputs_and_gradients_match(ours, expected, inputs)
    finally:
        torch.set_num_threads(previous)


def test_states_in_the_denormal_range_cost_no_more_than_normal_ones():
    """Inputs whose states and decays fall below fp32's smallest normal number, on 2 threads,
    take about as long as ordinary ones (without flushing they run 8-18x slower)."""
    def timed(scale, decay_exponent):
        inputs = scan_inputs(1, 3, 4096, 64, states=16, seed=3)
        with torch.no_grad():
            inputs["u"].mul_(scale)
            inputs["B"].mul_(scale)
            inputs["A"].fill_(decay_exponent)  # exp(softplus(delta) * A): below 1.2e-38 for A << -87
        args = {k: v.detach() for k, v in inputs.items()}
        fused_scan(**args, kinds=(0, 1, 2), num_slices=16)  # compiled and warm
        start = time.perf_counter()
        for _ in range(3):
            y = fused_scan(**args, kinds=(0, 1, 2), num_slices=16)
        return (time.perf_counter() - start) / 3, y

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        normal, _ = timed(1.0, -1.0)
        denormal, y = timed(1e-21, -200.0)  # delta * B * u ~ 1e-42, decays ~ exp(-140)
    finally:
        torch.set_num_threads(previous)
    assert torch.isfinite(y).all()
    assert denormal < 3 * normal, f"denormal inputs took {denormal / normal:.1f}x as long"


def test_auto_picks_numba_on_the_cpu_and_numba_refuses_other_devices():
    x = torch.randn(1, 4, 8)
    assert backends.resolve_path("auto", x) == "numba"
    assert backends.resolve_path("pure", x) == "pure"
    with pytest.raises(RuntimeError, match="runs on the CPU"):
        backends.resolve_path("numba", torch.randn(1, 4, 8, device="meta"))


def test_missing_numba_warns_once_and_falls_back(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def broken_import(name, *args, **kwargs):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("No module named 'numba' (simulated)")
        return real_import(name, *args, **kwargs)

    from nnunetv2_segresmamba.operators import numba_tom

    backends.numba_available.cache_clear()
    numba_tom.load_kernels.cache_clear()
    monkeypatch.setattr(builtins, "__import__", broken_import)
    import nnunetv2_segresmamba.operators as operators

    monkeypatch.delitem(sys.modules, "nnunetv2_segresmamba.operators.numba_kernels", raising=False)
    monkeypatch.delattr(operators, "numba_kernels", raising=False)
    try:
        with pytest.warns(RuntimeWarning, match="pip install numba"):
            assert backends.resolve_path("auto", torch.randn(1, 4, 8)) == "pure"
        with pytest.raises(RuntimeError, match="backend='numba' was requested"):
            backends.resolve_path("numba", torch.randn(1, 4, 8))
    finally:
        monkeypatch.undo()
        backends.numba_available.cache_clear()
        numba_tom.load_kernels.cache_clear()
    assert backends.resolve_path("auto", torch.randn(1, 4, 8)) == "numba"
