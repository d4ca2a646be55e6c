"""The Triton backend: where it is chosen, what happens when it cannot run, and, on a GPU,
the compiled kernels against the pure path and mamba_ssm. The kernels themselves are checked
against plain references in test_fused_tom.py (here in Triton's CPU interpreter)."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from nnunetv2_segresmamba.operators import TriOrientedMamba, backends
from nnunetv2_segresmamba.operators.selective_scan import selective_scan
from tests.reference import assert_outputs_and_gradients_match, reference_fused_scan, scan_inputs

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled Triton kernels need a CUDA GPU")


def test_auto_never_picks_triton_on_the_cpu():
    assert backends.resolve_path("auto", torch.randn(1, 4, 8)) == "numba"


def test_triton_on_the_cpu_runs_only_in_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        backends.resolve_path("triton", torch.randn(1, 4, 8))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backends.resolve_path("triton", torch.randn(1, 4, 8)) == "triton"


def test_the_kernels_refuse_cpu_tensors_outside_the_interpreter(monkeypatch):
    from nnunetv2_segresmamba.operators import triton_tom

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="runs on CUDA tensors"):
        triton_tom.directional_conv(torch.randn(1, 4, 8), torch.randn(1, 4, 8), torch.randn(1, 8), (0,), 1)


def test_kernels_that_fail_at_their_first_launch_warn_once_and_are_not_used():
    """A device the kernels cannot run on (here torch's meta device, which holds no data)."""
    backends.triton_works.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="failed at their first launch on meta"):
            assert not backends.triton_works("meta")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not backends.triton_works("meta")  # cached: no second warning
    finally:
        backends.triton_works.cache_clear()


def test_a_scan_function_is_refused_with_the_fused_backends():
    with pytest.raises(ValueError, match="fused numba or Triton kernels"):
        TriOrientedMamba(8, backend="triton", scan_function=selective_scan)


@pytest.mark.parametrize("arch", [80, 90])
def test_every_kernel_compiles_for_the_gpu_without_spilling_registers(arch):
    """Ahead of time, with Triton's compiler and ptxas, at the compile-time arguments used on
    CUDA (A100: sm_80, H100/H200: sm_90a). The interpreter checks what the kernels compute; this
    checks that they build, which the interpreter does not."""
    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "tests.triton_compile", str(arch)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert set(report) == {"conv_forward", "conv_backward_weights", "conv_backward_input", "scan_forward",
                           "scan_backward"}
    for kernel, info in report.items():
        assert info["spill_stores"] <= 16, f"{kernel} spills {info['spill_stores']} bytes on sm_{arch}: {info}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the compiled kernels run this configuration")
def test_the_gpu_configuration_matches_the_per_step_loop(monkeypatch):
    """One channel per scan program and the CUDA chunk size, as launched on a GPU, here in the
    interpreter (the other tests run it with more channels per program)."""
    from nnunetv2_segresmamba.operators import triton_tom

    monkeypatch.setattr(triton_tom, "INTERPRETER_BLOCK_E", triton_tom.CUDA_BLOCK_E)
    inputs = scan_inputs(2, 3, 70, 3, states=16)  # L spans two chunks of 64
    expected = reference_fused_scan(**inputs, kinds=(0, 1, 2), num_slices=7)
    ours = triton_tom.fused_scan(**inputs, kinds=(0, 1, 2), num_slices=7)
    assert_outputs_and_gradients_match(ours, expected, inputs)


def randomised_pair(d_model: int, other: str) -> tuple[TriOrientedMamba, TriOrientedMamba]:
    torch.manual_seed(0)
    pure = TriOrientedMamba(d_model, backend="pure")
    with torch.no_grad():
        for p in pure.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fast = TriOrientedMamba(d_model, backend=other)
    fast.load_state_dict(pure.state_dict())
    return pure.cuda(), fast.cuda()


def assert_layers_agree(pure: TriOrientedMamba, fast: TriOrientedMamba, shape: tuple[int, ...], tolerance: float):
    """Outputs and every gradient, as relative norms of the difference."""
    hidden = torch.randn(1, shape[0] * shape[1] * shape[2], pure.d_model, device="cuda", requires_grad=True)
    outputs = [layer(hidden, num_slices=shape[0]) for layer in (pure, fast)]
    weights = torch.randn_like(outputs[0])
    grads = [torch.autograd.grad((out * weights).sum(), [hidden, *layer.parameters()])
             for out, layer in zip(outputs, (pure, fast))]
    names = ["output", "hidden", *(name for name, _ in pure.named_parameters())]
    for name, a, b in zip(names, [outputs[0], *grads[0]], [outputs[1], *grads[1]]):
        error = ((b - a).norm() / a.norm()).item()
        assert error < tolerance, f"{name} differs by {error:.1e} (relative norm)"


@cuda_only
def test_auto_picks_triton_on_cuda_without_mamba_ssm():
    if backends.load_cuda_kernels() is not None:
        pytest.skip("mamba_ssm loads here, and auto prefers it")
    assert backends.resolve_path("auto", torch.randn(1, 4, 8, device="cuda")) == "triton"


@cuda_only
def test_compiled_triton_matches_the_pure_path_on_a_long_sequence():
    assert_layers_agree(*randomised_pair(48, "triton"), shape=(16, 32, 32), tolerance=1e-4)


@cuda_only
def test_compiled_triton_matches_mamba_ssm_where_it_loads():
    if backends.load_cuda_kernels() is None:
        pytest.skip("mamba_ssm/causal_conv1d are not installed (pip install .[cuda])")
    _, triton_layer = randomised_pair(48, "triton")
    _, cuda_layer = randomised_pair(48, "cuda")
    assert_layers_agree(cuda_layer, triton_layer, shape=(8, 16, 16), tolerance=1e-3)
