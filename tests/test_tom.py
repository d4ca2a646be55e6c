"""The ToM layer: mamba_ssm naming, the three directions against a plain reference, backends."""

import math
import warnings

import pytest
import torch

from nnunetv2_segresmamba.operators import MambaLayer, TriOrientedMamba, backends, numba_tom
from nnunetv2_segresmamba.operators.selective_scan import selective_scan
from tests.reference import backends_to_test, device_of, reference_tom


def mamba_ssm_v3_shapes(d_model, d_state=16, d_conv=4, expand=2):
    """Parameter names and shapes of mamba_ssm's Mamba (mamba_simple.py) with SegMamba's v3 copies."""
    E, R, N = expand * d_model, math.ceil(d_model / 16), d_state
    shapes = {"in_proj.weight": (2 * E, d_model), "out_proj.weight": (d_model, E)}
    for s in ("", "_b", "_s"):
        shapes.update({
            f"conv1d{s}.weight": (E, 1, d_conv), f"conv1d{s}.bias": (E,), f"x_proj{s}.weight": (R + 2 * N, E),
            f"dt_proj{s}.weight": (E, R), f"dt_proj{s}.bias": (E,), f"A{s}_log": (E, N), f"D{s}": (E,),
        })
    return shapes


@pytest.mark.parametrize("d_model", [48, 96, 20])
def test_state_dict_matches_mamba_ssm_naming(d_model):
    tom = TriOrientedMamba(d_model)
    assert {k: tuple(v.shape) for k, v in tom.state_dict().items()} == mamba_ssm_v3_shapes(d_model)


def test_initialisation_follows_mamba_ssm():
    tom = TriOrientedMamba(32)
    torch.testing.assert_close(tom.A_log[0], torch.log(torch.arange(1.0, 17.0)))
    assert torch.all(tom.D_s == 1)
    dt = torch.nn.functional.softplus(tom.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6


@pytest.mark.parametrize("backend", backends_to_test("pure", "numba", "triton"))
@pytest.mark.parametrize("spatial", [(3, 5, 7), (4, 4, 2), (1, 3, 3)])
def test_three_directions_match_plain_reference(spatial, backend):
    torch.manual_seed(0)
    tom = TriOrientedMamba(d_model=8, d_state=4, backend=backend)
    with torch.no_grad():  # randomise every direction so a mixed-up suffix shows
        for p in tom.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tom = tom.to(device_of(backend))
    hidden = torch.randn(2, math.prod(spatial), 8, device=device_of(backend), requires_grad=True)
    params = dict(tom.named_parameters())
    expected = reference_tom(hidden, params, num_slices=spatial[0])
    ours = tom(hidden, num_slices=spatial[0])
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)

    weights = torch.randn_like(expected)
    inputs = [hidden, *params.values()]
    g_ref = torch.autograd.grad((expected * weights).sum(), inputs)
    g_ours = torch.autograd.grad((ours * weights).sum(), inputs)
    for name, a, b in zip(["hidden", *params], g_ours, g_ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"gradient of {name}")


@pytest.mark.parametrize("backend", backends_to_test("pure", "numba", "triton"))
@pytest.mark.parametrize("directions", [("",), ("", "_b"), ("_s",)])
def test_a_subset_of_directions_matches_the_reference_and_has_only_its_parameters(directions, backend):
    torch.manual_seed(0)
    tom = TriOrientedMamba(d_model=8, d_state=4, directions=directions, backend=backend).to(device_of(backend))
    def direction_of(name):
        return "_b" if "_b" in name else "_s" if "_s" in name else ""

    shared = {"in_proj.weight", "out_proj.weight"}
    expected_names = {k for k in mamba_ssm_v3_shapes(8, d_state=4) if k in shared or direction_of(k) in directions}
    assert set(tom.state_dict()) == expected_names
    hidden = torch.randn(2, 3 * 4 * 5, 8, device=device_of(backend))
    expected = reference_tom(hidden, dict(tom.named_parameters()), num_slices=3, directions=directions)
    torch.testing.assert_close(tom(hidden, num_slices=3), expected, atol=1e-5, rtol=1e-4)


def test_mamba_layer_is_residual_over_depth_slices():
    layer = MambaLayer(8, d_state=4)
    x = torch.randn(1, 8, 3, 4, 5)
    tokens = layer.norm(x.flatten(2).transpose(1, 2))
    expected = layer.mamba(tokens, num_slices=3).transpose(1, 2).reshape(x.shape) + x
    torch.testing.assert_close(layer(x), expected)


def test_bad_inputs_raise_helpful_errors():
    tom = TriOrientedMamba(8)
    with pytest.raises(ValueError, match="multiple of num_slices"):
        tom(torch.randn(1, 10, 8), num_slices=3)
    with pytest.raises(ValueError, match="backend must be one of") as bad_backend:
        TriOrientedMamba(8, backend="nonsense")
    assert all(repr(name) in str(bad_backend.value) for name in ("auto", "pure", "numba", "cuda"))
    with pytest.raises(ValueError, match="non-empty subset"):
        TriOrientedMamba(8, directions=("_x",))
    with pytest.raises(RuntimeError, match="needs a CUDA tensor"):
        TriOrientedMamba(8, backend="cuda")(torch.randn(1, 4, 8), num_slices=1)


class CountingScan:
    """Our selective scan, counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return selective_scan(*args, **kwargs)


@pytest.mark.parametrize("directions", [("", "_b", "_s"), ("_s",)])
def test_a_scan_function_runs_every_direction_and_adds_no_weight(directions):
    torch.manual_seed(0)
    plain = TriOrientedMamba(8, d_state=4, backend="pure", directions=directions)
    scan = CountingScan()
    swapped = TriOrientedMamba(8, d_state=4, backend="pure", directions=directions, scan_function=scan)
    assert swapped.scan_function is scan
    swapped.load_state_dict(plain.state_dict())  # strict: the same names, no extra buffer
    assert set(swapped.state_dict()) == set(plain.state_dict())
    hidden = torch.randn(2, 3 * 4 * 5, 8)
    torch.testing.assert_close(swapped(hidden, num_slices=3), plain(hidden, num_slices=3))
    assert scan.calls == len(directions)
    layer = MambaLayer(8, d_state=4, backend="pure", scan_function=scan)
    layer(torch.randn(1, 8, 3, 4, 5))
    assert layer.mamba.scan_function is scan and scan.calls == len(directions) + 3


@pytest.mark.parametrize(("backend", "fused_calls"), [("pure", 0), ("numba", 1), ("auto", 1)])
def test_the_chosen_backend_runs_on_the_cpu(monkeypatch, backend, fused_calls):
    calls = []

    def counting_fused_scan(*args, **kwargs):
        calls.append(backend)
        return real_fused_scan(*args, **kwargs)

    real_fused_scan = numba_tom.fused_scan
    monkeypatch.setattr(numba_tom, "fused_scan", counting_fused_scan)
    TriOrientedMamba(8, d_state=4, backend=backend)(torch.randn(1, 12, 8), num_slices=3)
    assert len(calls) == fused_calls  # numba fuses the three directions in one call; pure never calls it


@pytest.mark.parametrize("backend", ["auto", "numba"])
def test_a_scan_function_is_refused_where_the_fused_kernels_may_run(backend):
    with pytest.raises(ValueError, match=r"backend='pure' \(any device\) or 'cuda'") as refused:
        TriOrientedMamba(8, backend=backend, scan_function=selective_scan)
    assert f"backend={backend!r}" in str(refused.value)
    with pytest.raises(TypeError, match="scan_function must be a callable"):
        TriOrientedMamba(8, backend="pure", scan_function="mambapy")


def test_missing_kernels_warn_once_and_fall_back(monkeypatch):
    """An ImportError or OSError from mamba_ssm gives one warning and the pure path."""
    import builtins

    real_import = builtins.__import__

    def broken_import(name, *args, **kwargs):
        if name.startswith(("mamba_ssm", "causal_conv1d")):
            raise OSError("undefined symbol: _ZN3c10 (simulated ABI mismatch)")
        return real_import(name, *args, **kwargs)

    backends.load_cuda_kernels.cache_clear()
    monkeypatch.setattr(builtins, "__import__", broken_import)
    with pytest.warns(RuntimeWarning, match="undefined symbol"):
        assert backends.load_cuda_kernels() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.load_cuda_kernels() is None  # cached: no second warning
    backends.load_cuda_kernels.cache_clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA fast path needs a GPU and mamba_ssm")
def test_cuda_path_matches_pure_path():
    if backends.load_cuda_kernels() is None:
        pytest.skip("mamba_ssm/causal_conv1d are not installed (pip install .[cuda])")
    torch.manual_seed(0)
    pure = TriOrientedMamba(48, backend="pure").cuda()
    fast = TriOrientedMamba(48, backend="cuda").cuda()
    fast.load_state_dict(pure.state_dict())
    hidden = torch.randn(2, 8 * 16 * 16, 48, device="cuda")
    torch.testing.assert_close(fast(hidden, 8), pure(hidden, 8), atol=1e-3, rtol=1e-3)
