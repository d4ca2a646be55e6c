"""What only the fused CPU ToM (numba) has: the same bits on any thread count and channel
partition, NaN as on the pure path, each thread's denormal mode restored, and its backend
selection. Its speed on denormal inputs is measured in benchmarks/scan_operator.py; the
kernels are checked against plain references in test_fused_tom.py, with Triton's."""

import sys

import numba
import numpy as np
import pytest
import torch

from nnunetv2_segresmamba.operators import backends
from nnunetv2_segresmamba.operators.numba_tom import fused_scan, load_kernels
from tests.reference import reference_fused_scan, scan_inputs


def _fused_scan_and_gradients(inputs, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        y = fused_scan(**leaves, kinds=(0, 1, 2), num_slices=4, chunk_size=16)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), list(leaves.values()))
        return [y.detach(), *grads]
    finally:
        torch.set_num_threads(previous)


def test_fused_scan_outputs_and_gradients_are_the_same_bits_on_any_thread_count():
    inputs = scan_inputs(2, 3, 40, 64, states=16, seed=1)
    one, two = _fused_scan_and_gradients(inputs, 1), _fused_scan_and_gradients(inputs, 2)
    names = ["y", *inputs]
    assert all(torch.equal(a, b) for a, b in zip(one, two)), [n for n, a, b in zip(names, one, two)
                                                           if not torch.equal(a, b)]


def _kernel_arguments(inputs, kinds, num_slices, chunk):
    kernels = load_kernels()
    arrays = {k: v.detach().numpy() for k, v in inputs.items()}
    batch, _, length, channels = inputs["u"].shape
    chunks = -(-length // chunk)
    outputs = kernels.ScanOutputs(y=np.empty((batch, length, channels), np.float32),
                                  y_ungated=np.empty((batch, length, channels), np.float32),
                                  entering=np.empty((batch, len(kinds), chunks, inputs["A"].shape[1], channels),
                                                    np.float32))
    return (kernels.ScanInputs(**arrays), kernels.Directions(kinds=np.array(kinds, np.int64), num_slices=num_slices),
            chunk, outputs)


@pytest.mark.parametrize("blocks", [7, 20, 161, 322])
def test_every_channel_partition_covers_each_channel_once(blocks):
    """E = 322 in up to 322 blocks (20: more blocks than ceil(E / 20)-channel pieces fill): each
    partition writes every channel, as one block does (up to the rounding of vectorized versus
    scalar loops)."""
    inputs = {k: v.detach() for k, v in scan_inputs(1, 2, 9, 322, states=3, seed=4).items()}
    scan_inputs_, directions, chunk, outputs = _kernel_arguments(inputs, (0, 2), 3, 4)
    load_kernels().scan_forward(scan_inputs_, directions, chunk, 1, outputs)
    expected = outputs.y.copy()
    outputs.y.fill(np.nan)
    load_kernels().scan_forward(scan_inputs_, directions, chunk, blocks, outputs)
    np.testing.assert_allclose(outputs.y, expected, rtol=1e-6, atol=1e-6)


def test_a_nan_time_step_propagates_as_on_the_pure_path():
    """A NaN delta gives NaN outputs and gradients where the pure scan gives them, not dt = 0."""
    inputs = scan_inputs(1, 1, 12, 16, states=4, seed=5)
    with torch.no_grad():
        inputs["delta"][0, 0, 5, 3] = float("nan")
    ours = fused_scan(**inputs, kinds=(0,), num_slices=1, chunk_size=4)
    pure = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    expected = reference_fused_scan(**pure, kinds=(0,), num_slices=1)
    assert torch.isnan(ours).any()
    assert torch.equal(torch.isnan(ours), torch.isnan(expected))
    (grad_ours,) = torch.autograd.grad(ours.nansum(), [inputs["u"]])
    (grad_pure,) = torch.autograd.grad(expected.nansum(), [pure["u"]])
    assert torch.equal(torch.isnan(grad_ours), torch.isnan(grad_pure)) and torch.isnan(grad_ours).any()


@pytest.mark.skipif(not load_kernels().X86, reason="flush-to-zero is switched per thread on x86 only")
def test_work_items_restore_each_threads_denormal_mode_also_when_one_raises():
    kernels = load_kernels()
    items = 8 * numba.get_num_threads()
    assert not kernels.threads_denormal_modes(items).any(), "the threads flush before any scan"
    inputs = {k: v.detach() for k, v in scan_inputs(1, 1, 8, 16, states=2, seed=6).items()}
    scan_inputs_, directions, chunk, outputs = _kernel_arguments(inputs, (0,), 1, 8)
    kernels.scan_forward(scan_inputs_, directions, chunk, 2, outputs)
    assert not kernels.threads_denormal_modes(items).any(), "a scan left a thread flushing"

    saved = kernels.ScanSaved(entering=outputs.entering, y_ungated=outputs.y_ungated)
    grads = kernels.ScanGrads(u=np.empty_like(inputs["u"].numpy()), delta=np.empty_like(inputs["u"].numpy()),
                              z=np.empty_like(inputs["z"].numpy()), A_parts=np.zeros((1, 1, 2, 16), np.float32),
                              D_parts=np.zeros((1, 1, 16), np.float32), B_parts=np.zeros((1, 2, 1, 8, 2), np.float32),
                              C_parts=np.zeros((1, 2, 1, 8, 2), np.float32))
    huge_chunk = 2**40  # the work items' (chunk + 1, N, E) buffers cannot be allocated: each raises
    with pytest.raises(RuntimeError, match="a work item raised"):
        kernels.scan_backward(scan_inputs_, directions, huge_chunk, 2, saved, outputs.y, grads)
    assert not kernels.threads_denormal_modes(items).any(), "a work item that raised left its thread flushing"


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
