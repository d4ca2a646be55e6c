"""The fused CPU ToM (numba) against plain references: the scan and the causal conv of every
direction, outputs and all gradients, odd sizes, several slice and thread counts, autocast,
denormal inputs, and backend selection."""

import math
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from nnunetv2_segresmamba.operators import TriOrientedMamba, backends
from nnunetv2_segresmamba.operators.numba_tom import directional_conv, fused_scan
from tests.reference import reference_scan, reference_tom

ATOL, RTOL = 1e-5, 1e-5  # fp32 outputs
GRAD_ATOL, GRAD_RTOL = 1e-4, 1e-4  # fp32 gradients, summed over up to a few hundred steps
FORWARD, REVERSE, INTER_SLICE = 0, 1, 2


def scan_order(kind, length, num_slices):
    """Positions in the order a direction visits them, written out as lists."""
    per_slice = length // num_slices
    if kind == FORWARD:
        return list(range(length))
    if kind == REVERSE:
        return list(reversed(range(length)))
    return [s * per_slice + p for p in range(per_slice) for s in range(num_slices)]


def reference_fused_scan(u, delta, A, B, C, D, delta_bias, z, kinds, num_slices):
    """Each direction through the per-step loop in its own order, put back in place, summed, gated."""
    batch, _, length, channels = u.shape
    total = 0
    for k, kind in enumerate(kinds):
        order = torch.tensor(scan_order(kind, length, num_slices))
        no_gate = torch.full((batch, channels, length), 30.0)  # silu(30) = 30 to fp32 rounding
        y = reference_scan(u[:, k, order].mT, delta[:, k, order].mT, A[k].mT, B[:, k, order].mT, C[:, k, order].mT,
                           D[k], no_gate, delta_bias[k]) / 30.0
        total = total + torch.zeros_like(y).index_copy(-1, order, y)
    return total.mT * F.silu(z)


def reference_directional_conv(x, weight, bias, kinds, num_slices):
    outs = []
    for k, kind in enumerate(kinds):
        order = torch.tensor(scan_order(kind, x.shape[1], num_slices))
        conv = F.conv1d(F.pad(x[:, order].mT, (weight.shape[1] - 1, 0)), weight[k].mT.unsqueeze(1), bias[k],
                        groups=x.shape[2])
        outs.append(torch.zeros_like(conv).index_copy(-1, order, F.silu(conv)).mT)
    return torch.stack(outs, dim=1)


def scan_inputs(batch, directions, length, channels, states, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "u": (batch, directions, length, channels), "delta": (batch, directions, length, channels),
        "A": (directions, states, channels), "B": (batch, directions, length, states),
        "C": (batch, directions, length, states), "D": (directions, channels), "delta_bias": (directions, channels),
        "z": (batch, length, channels),
    }
    inputs = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    inputs["A"] = -torch.rand(shapes["A"], generator=g) * 4 - 0.1
    return {k: v.requires_grad_() for k, v in inputs.items()}


def assert_outputs_and_gradients_match(ours, expected, inputs):
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)
    weights = torch.randn_like(expected)
    grads_ref = torch.autograd.grad((expected * weights).sum(), list(inputs.values()))
    grads_ours = torch.autograd.grad((ours * weights).sum(), list(inputs.values()))
    for name, g_ref, g_ours in zip(inputs, grads_ref, grads_ours):
        torch.testing.assert_close(g_ours, g_ref, atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=f"gradient of {name}")


@pytest.mark.parametrize(
    "batch,length,num_slices,channels,chunk_size,kinds",
    [
        (2, 12, 3, 16, 4, (FORWARD, REVERSE, INTER_SLICE)),  # chunks divide L
        (1, 35, 5, 20, 8, (FORWARD, REVERSE, INTER_SLICE)),  # L not a multiple of the chunk, odd sizes
        (2, 21, 7, 33, 64, (INTER_SLICE, FORWARD)),  # one chunk, odd width (blocks of unequal size)
        (1, 1, 1, 16, 4, (FORWARD, REVERSE, INTER_SLICE)),  # a single position
        (3, 30, 2, 48, 16, (REVERSE,)),
    ],
)
def test_fused_scan_matches_the_per_step_loop(batch, length, num_slices, channels, chunk_size, kinds):
    inputs = scan_inputs(batch, len(kinds), length, channels, states=5)
    expected = reference_fused_scan(**inputs, kinds=kinds, num_slices=num_slices)
    ours = fused_scan(**inputs, kinds=kinds, num_slices=num_slices, chunk_size=chunk_size)
    assert_outputs_and_gradients_match(ours, expected, inputs)


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


@pytest.mark.parametrize("length,num_slices,kinds", [(24, 4, (0, 1, 2)), (7, 7, (2, 0)), (5, 1, (1,))])
def test_directional_conv_matches_conv1d_in_each_order(length, num_slices, kinds):
    g = torch.Generator().manual_seed(2)
    inputs = {"x": torch.randn(2, length, 24, generator=g), "weight": torch.randn(len(kinds), 4, 24, generator=g),
              "bias": torch.randn(len(kinds), 24, generator=g)}
    inputs = {k: v.requires_grad_() for k, v in inputs.items()}
    expected = reference_directional_conv(**inputs, kinds=kinds, num_slices=num_slices)
    ours = directional_conv(**inputs, kinds=kinds, num_slices=num_slices)
    assert_outputs_and_gradients_match(ours, expected, inputs)


def randomised_tom(backend, directions=("", "_b", "_s")):
    torch.manual_seed(0)
    tom = TriOrientedMamba(d_model=8, d_state=4, backend=backend, directions=directions)
    with torch.no_grad():  # randomise every direction so a mixed-up suffix shows
        for p in tom.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return tom


def test_numba_tom_reads_strided_in_proj_halves_and_runs_without_autograd():
    tom = randomised_tom("numba")
    hidden = torch.randn(2, 3 * 4 * 5, 8)
    expected = reference_tom(hidden, dict(tom.named_parameters()), num_slices=3)
    with torch.no_grad():
        torch.testing.assert_close(tom(hidden, num_slices=3), expected, atol=ATOL, rtol=1e-4)


def test_numba_tom_runs_in_fp32_under_bf16_autocast():
    """fp32 inside: only in_proj/out_proj round to bf16 (a bf16 scan errs by ~3e-2)."""
    tom = randomised_tom("numba")
    hidden = torch.randn(1, 4 * 6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = tom(hidden, num_slices=4)
        xz = tom.in_proj(hidden)  # bf16, as the fused path sees it
    params = {k: v.float() for k, v in tom.named_parameters()}
    expected = reference_tom(hidden, params, num_slices=4)
    assert ours.dtype == torch.bfloat16
    assert xz.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), expected, atol=2e-2, rtol=2e-2)
    ours.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in tom.parameters())


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


def test_long_sequence_memory_holds_no_per_state_tensor():
    """Saved for backward at L = 65536: inputs plus one state per 64 steps, never (L, E, N)."""
    length, channels, states = 65536, 32, 16
    inputs = scan_inputs(1, 1, length, channels, states)
    y = fused_scan(**inputs, kinds=(0,), num_slices=1)
    saved = sum(t.numel() for t in y.grad_fn.saved_tensors)
    per_state_tensor = length * channels * states
    assert saved < per_state_tensor / 2, f"{saved} saved elements vs {per_state_tensor} for one (L, E, N) tensor"
    y.sum().backward()
    assert math.isfinite(inputs["A"].grad.sum().item())
