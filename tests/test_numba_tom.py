"""What only the fused CPU ToM (numba) has: the same bits on any thread count and channel
partition, NaN as on the pure path, each thread's denormal mode restored, and its backend
selection. Its speed on denormal inputs is measured in benchmarks/scan_operator.py; the
kernels are checked against plain references in test_fused_tom.py, with Triton's, and here
in the inter-slice reverse order and SS2D's four orders (VMamba's forward_core spelled out)."""

import sys

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunetv2_segresmamba.operators import backends
from nnunetv2_segresmamba.operators.directions import INTER_SLICE, INTER_SLICE_REVERSE, REVERSE, SS2D_KINDS
from nnunetv2_segresmamba.operators.numba_tom import directional_conv, fused_scan, load_kernels
from tests.reference import (
    assert_outputs_and_gradients_match,
    reference_directional_conv,
    reference_fused_scan,
    reference_scan,
    scan_arguments,
    scan_inputs,
)


def _fused_scan_and_gradients(inputs, threads, kinds):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        y = fused_scan(**scan_arguments(leaves), kinds=kinds, num_slices=4, chunk_size=16)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), list(leaves.values()))
        return [y.detach(), *grads]
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("kinds,gate", [((0, 1, 2), True), (SS2D_KINDS, False)], ids=["tom", "ss2d-ungated"])
def test_fused_scan_outputs_and_gradients_are_the_same_bits_on_any_thread_count(kinds, gate):
    inputs = scan_inputs(2, len(kinds), 40, 64, states=16, seed=1, gate=gate)
    one, two = _fused_scan_and_gradients(inputs, 1, kinds), _fused_scan_and_gradients(inputs, 2, kinds)
    names = ["y", *inputs]
    assert all(torch.equal(a, b) for a, b in zip(one, two)), [n for n, a, b in zip(names, one, two)
                                                           if not torch.equal(a, b)]


def _kernel_arguments(inputs, kinds, num_slices, chunk):
    kernels = load_kernels()
    arrays = {k: v.detach().numpy() for k, v in inputs.items() if k != "z"}  # the kernels take no gate
    batch, _, length, channels = inputs["u"].shape
    chunks = -(-length // chunk)
    outputs = kernels.ScanOutputs(y=np.empty((batch, length, channels), np.float32),
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

    saved = kernels.ScanSaved(entering=outputs.entering)
    grads = kernels.ScanGrads(u=np.empty_like(inputs["u"].numpy()), delta=np.empty_like(inputs["u"].numpy()),
                              A_parts=np.zeros((1, 1, 2, 16), np.float32),
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


# ---------------------------------------------------------------- the inter-slice reverse order and SS2D
# L = 5 * 7 with 5 slices (SS2D's H x W = 5 x 7), E = 37 in two channel blocks of unequal width,
# chunks of 8 that do not divide L


@pytest.mark.parametrize("kinds", [(INTER_SLICE_REVERSE,), SS2D_KINDS, (INTER_SLICE_REVERSE, REVERSE, INTER_SLICE)],
                         ids=["inter_slice_reverse", "ss2d", "mixed"])
@pytest.mark.parametrize("gate", [True, False], ids=["gated", "ungated"])
def test_inter_slice_reverse_and_ss2d_kinds_match_the_per_step_loop(kinds, gate):
    inputs = scan_inputs(2, len(kinds), 35, 37, states=5, seed=7, gate=gate)
    expected = reference_fused_scan(**scan_arguments(inputs), kinds=kinds, num_slices=5)
    ours = fused_scan(**scan_arguments(inputs), kinds=kinds, num_slices=5, chunk_size=8)
    assert_outputs_and_gradients_match(ours, expected, inputs)


def vmamba_forward_core(u, delta, A, B, C, D, delta_bias, height, width):
    """VMamba's SS2D.forward_core (official code) with direction k's inputs given as an H x W map
    at row-major positions, (Bt, 4, L, X): stacked as x.view(L) and x.transpose(H, W).view(L),
    then both flipped; each scanned; the reversed ones flipped back and the column-major ones
    transposed back; the four summed, (Bt, L, E). No gate."""
    batch, _, length, channels = u.shape

    def to_scan(t, k):  # (Bt, L, X) at positions -> (Bt, X, L) in direction k's scan order
        x = t[:, k].mT.reshape(batch, -1, height, width)
        seq = (x if k % 2 == 0 else x.transpose(2, 3)).reshape(batch, -1, length)
        return seq.flip(-1) if k >= 2 else seq

    out_y = torch.stack([reference_scan(to_scan(u, k), to_scan(delta, k), A[k].mT, to_scan(B, k), to_scan(C, k),
                                        D[k], None, delta_bias[k]) for k in range(4)], dim=1)
    inv_y = out_y[:, 2:4].flip(-1)
    wh_y = out_y[:, 1].reshape(batch, -1, width, height).transpose(2, 3).reshape(batch, -1, length)
    invwh_y = inv_y[:, 1].reshape(batch, -1, width, height).transpose(2, 3).reshape(batch, -1, length)
    return (out_y[:, 0] + inv_y[:, 0] + wh_y + invwh_y).mT


def test_ss2d_kinds_scan_as_vmambas_forward_core():
    """SS2D_KINDS with num_slices = H are x_proj_weight[k]'s orders: hw, wh, flipped hw, flipped wh."""
    height, width = 5, 7
    inputs = scan_inputs(2, 4, height * width, 37, states=4, seed=8, gate=False)
    expected = vmamba_forward_core(**inputs, height=height, width=width)
    ours = fused_scan(**inputs, z=None, kinds=SS2D_KINDS, num_slices=height, chunk_size=16)
    assert_outputs_and_gradients_match(ours, expected, inputs)


def test_a_gate_multiplies_the_ungated_sum():
    inputs = {k: v.detach() for k, v in scan_inputs(1, 4, 35, 20, states=3, seed=9).items()}
    z = inputs.pop("z")
    ungated = fused_scan(**inputs, z=None, kinds=SS2D_KINDS, num_slices=5)
    gated = fused_scan(**inputs, z=z, kinds=SS2D_KINDS, num_slices=5)
    torch.testing.assert_close(gated, ungated * F.silu(z), atol=0, rtol=0)


@pytest.mark.parametrize("kinds", [(INTER_SLICE_REVERSE,), SS2D_KINDS], ids=["inter_slice_reverse", "ss2d"])
def test_directional_conv_in_the_inter_slice_reverse_order(kinds):
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 35, 74, generator=g)[..., :37]  # strided, as a half of in_proj's output
    inputs = {"x": x, "weight": torch.randn(len(kinds), 4, 37, generator=g),
              "bias": torch.randn(len(kinds), 37, generator=g)}
    inputs = {k: v.requires_grad_() for k, v in inputs.items()}
    expected = reference_directional_conv(**inputs, kinds=kinds, num_slices=5)
    ours = directional_conv(**inputs, kinds=kinds, num_slices=5)
    assert_outputs_and_gradients_match(ours, expected, inputs)


def test_an_unknown_kind_is_refused():
    inputs = scan_inputs(1, 1, 6, 16, states=2, gate=False)
    with pytest.raises(ValueError, match="INTER_SLICE_REVERSE"):
        fused_scan(**inputs, z=None, kinds=(INTER_SLICE_REVERSE + 1,), num_slices=2)
    with pytest.raises(ValueError, match="INTER_SLICE_REVERSE"):
        directional_conv(torch.randn(1, 6, 16), torch.randn(1, 4, 16), torch.randn(1, 16), (-1,), 2)
