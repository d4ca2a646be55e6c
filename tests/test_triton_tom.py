"""The Triton backend: where it is chosen, what happens when it cannot run, and, on a GPU,
the compiled kernels against the pure path and mamba_ssm. The kernels themselves are checked
against plain references in test_fused_tom.py (here in Triton's CPU interpreter), and here in
the inter-slice reverse order and SS2D's four orders."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from nnunetv2_segresmamba.operators import TriOrientedMamba, backends, tom
from nnunetv2_segresmamba.operators.directions import (
    FORWARD,
    INTER_SLICE,
    INTER_SLICE_REVERSE,
    REVERSE,
    SS2D_KINDS,
)
from nnunetv2_segresmamba.operators.selective_scan import selective_scan
from tests.reference import (
    assert_outputs_and_gradients_match,
    backends_to_test,
    device_of,
    reference_directional_conv,
    reference_fused_scan,
    scan_arguments,
    scan_inputs,
)

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


@pytest.fixture
def fresh_probe():
    """triton_works without the answers of earlier tests, and without its answers afterwards."""
    backends.triton_works.cache_clear()
    yield
    backends.triton_works.cache_clear()


needs_triton = pytest.mark.parametrize("backend", backends_to_test("triton"))


@needs_triton
@pytest.mark.parametrize("context", [torch.inference_mode, torch.no_grad], ids=["inference_mode", "no_grad"])
def test_the_probe_finds_the_kernels_working_without_autograd(fresh_probe, backend, context):
    """As nnU-Net's predictor asks it: under torch.inference_mode(); the probe's backward pass
    must not make the kernels look broken there."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with context():
            assert backends.triton_works(device_of(backend), d_state=4, d_conv=4)


@needs_triton
def test_the_probe_compiles_the_layers_configuration(fresh_probe, backend, monkeypatch):
    """Its state size, conv width and chunk size are those the layer launches, once per device
    and configuration."""
    from nnunetv2_segresmamba.operators import triton_tom

    launched = []
    run = triton_tom.Launch.run
    monkeypatch.setattr(triton_tom.Launch, "run", lambda launch: launched.append(launch) or run(launch))
    device = device_of(backend)
    assert backends.triton_works(device, d_state=5, d_conv=3)
    scans = [launch.arguments for launch in launched if launch.kernel.startswith("scan")]
    convs = [launch.arguments for launch in launched if launch.kernel.startswith("conv")]
    assert {a["BLOCK_N"] for a in scans} == {8} and {a["sizes"].states for a in scans} == {5}
    assert {a["CHUNK"] for a in scans} == {16 if device == "cpu" else 64}  # the interpreter's, the GPU's
    assert {a["WIDTH"] for a in convs} == {3}
    assert {a["KEEP_STATES"] for a in scans if "KEEP_STATES" in a} == {False, True}
    count = len(launched)
    assert backends.triton_works(device, d_state=5, d_conv=3) and len(launched) == count  # cached


def test_the_layer_asks_for_a_path_with_its_state_size_and_conv_width(monkeypatch):
    asked = []
    monkeypatch.setattr(tom, "resolve_path", lambda *args: asked.append(args) or "pure")
    TriOrientedMamba(8, d_state=6, d_conv=3)(torch.randn(1, 8, 8), num_slices=2)
    assert [(backend, d_state, d_conv) for backend, _, d_state, d_conv in asked] == [("auto", 6, 3)]


class ProbingNetwork(nn.Module):
    """A ToM between two 1x1x1 convs, which asks the Triton probe inside its forward, where
    nnU-Net's predictor runs it, and runs its ToM with the Triton kernels."""

    def __init__(self, in_channels: int = 1, width: int = 4, classes: int = 2):
        super().__init__()
        self.stem, self.head = nn.Conv3d(in_channels, width, 1), nn.Conv3d(width, classes, 1)
        self.tom = TriOrientedMamba(width, d_state=4, backend="triton")
        self.asked: list[tuple[bool, bool]] = []  # (inference mode on, the probe's answer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, D, H, W) -> (B, classes, D, H, W)
        works = backends.triton_works(str(x.device), self.tom.d_state, self.tom.d_conv)
        self.asked.append((torch.is_inference_mode_enabled(), works))
        features = self.stem(x)
        tokens = features.flatten(2).transpose(1, 2)  # (B, L, width)
        out = self.tom(tokens, num_slices=x.shape[2]).transpose(1, 2).reshape(features.shape)
        return self.head(out)


@needs_triton
def test_the_probe_finds_the_kernels_working_inside_nnunets_predictor(fresh_probe, backend):
    pytest.importorskip("nnunetv2")
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    patch = [2, 4, 4]
    plans = PlansManager({"dataset_name": "Dataset999_Probe", "plans_name": "nnUNetPlans",
                          "configurations": {"3d_fullres": {"patch_size": patch, "architecture": {}}}})
    network = ProbingNetwork()
    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device(device_of(backend)), allow_tqdm=False)
    predictor.manual_initialization(network, plans, plans.get_configuration("3d_fullres"), None,
                                    {"labels": {"background": 0, "a": 1}}, "ProbingTrainer", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        logits = predictor.predict_sliding_window_return_logits(torch.randn(1, *patch))
    assert network.asked == [(True, True)]  # asked once, in inference mode, and the kernels work
    assert logits.shape == (2, *patch) and torch.isfinite(logits).all()


def test_the_chosen_paths_are_logged_once_each_where_asked(monkeypatch, tmp_path):
    log = tmp_path / "paths.jsonl"
    monkeypatch.setenv(backends.PATH_LOG_VAR, str(log))
    backends._log_path.cache_clear()
    x = torch.randn(1, 4, 8)
    for _ in range(2):
        backends.resolve_path("pure", x, d_state=16)
    with torch.inference_mode():
        backends.resolve_path("pure", x, d_state=16)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["path"], r["device"], r["d_state"], r["inference_mode"]) for r in records] == \
        [("pure", "cpu", 16, False), ("pure", "cpu", 16, True)]
    assert records[0]["pid"] == os.getpid() and records[0]["process"] == os.path.basename(sys.argv[0])


def test_the_triton_modules_do_not_import_the_backend_choice():
    """backends imports triton_tom, never the other way round."""
    code = ("import sys; import nnunetv2_segresmamba.operators.triton_tom; "
            "assert 'nnunetv2_segresmamba.operators.backends' not in sys.modules, 'backends was imported'")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@needs_triton
def test_the_a_gradient_holds_where_the_drive_dwarfs_the_decayed_state(backend):
    """Decays of ~1e-5 and inputs of ~1e3: the state entering a step is ~1e3, its decayed share
    ~1e-2, the step's drive ~1e3. The A gradient, G_t a_t h_{t-1} delta_t summed, needs that
    share to fp32 precision, which h_t - drive_t loses (~1e-2 relative); float64 reference."""
    from nnunetv2_segresmamba.operators import triton_tom

    kinds, num_slices = (FORWARD, REVERSE, INTER_SLICE), 4
    inputs = scan_inputs(1, 3, 32, 4, states=4, seed=3)
    with torch.no_grad():
        inputs["u"].mul_(0.1).add_(1.0).mul_(1e3)
        inputs["delta"].fill_(0.5)  # softplus(0.5 + bias) around 1
        inputs["delta_bias"].mul_(0.1)
        inputs["A"].fill_(-12.0).sub_(torch.rand_like(inputs["A"]))
    weights = torch.randn(1, 32, 4, dtype=torch.float64)
    exact = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    expected = reference_fused_scan(**exact, kinds=kinds, num_slices=num_slices)
    (grad_A_expected,) = torch.autograd.grad((expected * weights).sum(), exact["A"])
    ours_inputs = {k: v.to(device_of(backend)) for k, v in inputs.items()}
    ours = triton_tom.fused_scan(**ours_inputs, kinds=kinds, num_slices=num_slices, chunk_size=8)
    (grad_A,) = torch.autograd.grad((ours * weights.to(ours)).sum(), ours_inputs["A"])
    torch.testing.assert_close(grad_A.double().cpu(), grad_A_expected, rtol=1e-4, atol=1e-7)


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


# ---------------------------------------------------------------- the inter-slice reverse order and SS2D
# L = 5 * 7 with 5 slices (SS2D's H x W = 5 x 7), E = 6 (a partial block of channels), chunks
# of 8 that do not divide L; small, for the interpreter


@needs_triton
@pytest.mark.parametrize("kinds", [(INTER_SLICE_REVERSE,), SS2D_KINDS], ids=["inter_slice_reverse", "ss2d"])
@pytest.mark.parametrize("gate", [True, False], ids=["gated", "ungated"])
def test_inter_slice_reverse_and_ss2d_kinds_match_the_per_step_loop(backend, kinds, gate):
    from nnunetv2_segresmamba.operators import triton_tom

    inputs = scan_inputs(1, len(kinds), 35, 6, states=3, seed=7, device=device_of(backend), gate=gate)
    expected = reference_fused_scan(**scan_arguments(inputs), kinds=kinds, num_slices=5)
    ours = triton_tom.fused_scan(**scan_arguments(inputs), kinds=kinds, num_slices=5, chunk_size=8)
    assert_outputs_and_gradients_match(ours, expected, inputs)


@needs_triton
@pytest.mark.parametrize("kinds", [(INTER_SLICE_REVERSE,), SS2D_KINDS], ids=["inter_slice_reverse", "ss2d"])
def test_directional_conv_in_the_inter_slice_reverse_order(backend, kinds):
    from nnunetv2_segresmamba.operators import triton_tom

    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 35, 12, generator=g)[..., :6]  # strided, as a half of in_proj's output
    inputs = {"x": x, "weight": torch.randn(len(kinds), 4, 6, generator=g),
              "bias": torch.randn(len(kinds), 6, generator=g)}
    inputs = {k: v.to(device_of(backend)).requires_grad_() for k, v in inputs.items()}
    expected = reference_directional_conv(**inputs, kinds=kinds, num_slices=5)
    ours = triton_tom.directional_conv(**inputs, kinds=kinds, num_slices=5)
    assert_outputs_and_gradients_match(ours, expected, inputs)


@needs_triton
def test_an_unknown_kind_is_refused(backend):
    from nnunetv2_segresmamba.operators import triton_tom

    inputs = scan_inputs(1, 1, 6, 4, states=2, device=device_of(backend), gate=False)
    with pytest.raises(ValueError, match="KINDS"):
        triton_tom.fused_scan(**inputs, z=None, kinds=(INTER_SLICE_REVERSE + 1,), num_slices=2)


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
