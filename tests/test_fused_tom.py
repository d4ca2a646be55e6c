"""The fused ToM kernels, numba (CPU) and Triton (CUDA, or Triton's CPU interpreter here),
against plain references: the scan and the causal conv of every direction, outputs and all
gradients, odd sizes, several slice counts, strided inputs, autocast and the memory bound."""

import math

import pytest
import torch

from nnunetv2_segresmamba.operators import TriOrientedMamba
from nnunetv2_segresmamba.operators.tom import fused_module
from tests.reference import (
    ATOL,
    FORWARD,
    INTER_SLICE,
    REVERSE,
    assert_outputs_and_gradients_match,
    backends_to_test,
    device_of,
    reference_directional_conv,
    reference_fused_scan,
    reference_tom,
    scan_inputs,
)


@pytest.fixture(params=backends_to_test("numba", "triton"))
def backend(request):
    return request.param


@pytest.mark.parametrize(
    "batch,length,num_slices,channels,chunk_size,kinds",
    [
        (2, 12, 3, 16, 4, (FORWARD, REVERSE, INTER_SLICE)),  # chunks divide L
        (1, 35, 5, 20, 8, (FORWARD, REVERSE, INTER_SLICE)),  # L not a multiple of the chunk, odd sizes
        (2, 21, 7, 33, 32, (INTER_SLICE, FORWARD)),  # one chunk, odd width (blocks of unequal size)
        (1, 1, 1, 16, 4, (FORWARD, REVERSE, INTER_SLICE)),  # a single position
        (3, 30, 2, 48, 16, (REVERSE,)),
    ],
)
def test_fused_scan_matches_the_per_step_loop(backend, batch, length, num_slices, channels, chunk_size, kinds):
    inputs = scan_inputs(batch, len(kinds), length, channels, states=5, device=device_of(backend))
    expected = reference_fused_scan(**inputs, kinds=kinds, num_slices=num_slices)
    ours = fused_module(backend).fused_scan(**inputs, kinds=kinds, num_slices=num_slices, chunk_size=chunk_size)
    assert_outputs_and_gradients_match(ours, expected, inputs)


@pytest.mark.parametrize("length,num_slices,kinds", [(24, 4, (0, 1, 2)), (7, 7, (2, 0)), (5, 1, (1,))])
def test_directional_conv_matches_conv1d_in_each_order(backend, length, num_slices, kinds):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, length, 48, generator=g)[..., :24]  # strided, as a half of in_proj's output
    inputs = {"x": x, "weight": torch.randn(len(kinds), 4, 24, generator=g),
              "bias": torch.randn(len(kinds), 24, generator=g)}
    inputs = {k: v.to(device_of(backend)).requires_grad_() for k, v in inputs.items()}
    expected = reference_directional_conv(**inputs, kinds=kinds, num_slices=num_slices)
    ours = fused_module(backend).directional_conv(**inputs, kinds=kinds, num_slices=num_slices)
    assert_outputs_and_gradients_match(ours, expected, inputs)


def randomised_tom(backend, directions=("", "_b", "_s")):
    torch.manual_seed(0)
    tom = TriOrientedMamba(d_model=8, d_state=4, backend=backend, directions=directions)
    with torch.no_grad():  # randomise every direction so a mixed-up suffix shows
        for p in tom.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return tom.to(device_of(backend))


def test_tom_reads_strided_in_proj_halves_and_runs_without_autograd(backend):
    tom = randomised_tom(backend)
    hidden = torch.randn(2, 3 * 4 * 5, 8, device=device_of(backend))
    expected = reference_tom(hidden, dict(tom.named_parameters()), num_slices=3)
    with torch.no_grad():
        torch.testing.assert_close(tom(hidden, num_slices=3), expected, atol=ATOL, rtol=1e-4)


def test_tom_scans_in_fp32_under_bf16_autocast(backend, monkeypatch):
    """Under bf16 autocast only in_proj and out_proj run in bf16: a spy on the fused kernels'
    entry points sees every tensor in fp32 (a bf16 scan would err by ~3e-2)."""
    fused = fused_module(backend)
    seen = []

    def spy(name):
        real = getattr(fused, name)

        def recording(*args, **kwargs):
            seen.extend((name, a.dtype) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
            return real(*args, **kwargs)

        return recording

    for name in ("directional_conv", "fused_scan"):
        monkeypatch.setattr(fused, name, spy(name))
    tom = randomised_tom(backend)
    device = device_of(backend)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = tom(torch.randn(1, 4 * 6, 8, device=device), num_slices=4)
    assert out.dtype == torch.bfloat16
    assert {name for name, _ in seen} == {"directional_conv", "fused_scan"}
    assert all(dtype == torch.float32 for _, dtype in seen), seen
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in tom.parameters())


def test_long_sequence_memory_holds_no_per_state_tensor(backend):
    """Saved for backward: inputs plus one state per chunk, never an (L, E, N) tensor."""
    length, channels, states = 256, 16, 16
    inputs = scan_inputs(1, 1, length, channels, states, device=device_of(backend))
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fused_module(backend).fused_scan(**inputs, kinds=(0,), num_slices=1, chunk_size=64)
    per_state_tensor = length * channels * states
    assert sum(saved) < per_state_tensor / 2, f"{sum(saved)} saved elements vs {per_state_tensor} for one (L, E, N)"
    y.sum().backward()
    assert math.isfinite(inputs["A"].grad.sum().item())
