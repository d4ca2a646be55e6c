"""Swin-UMamba port: official state_dict layout, SS2D against a plain reference of VMamba's math
on every backend, the networks' shapes and checks, and VMamba's ImageNet checkpoints.

``tests/data/swin_umamba{,_d}_official_state_dict.txt`` list ``key shape`` of the official
``SwinUMamba`` (1 -> 14 channels) and ``SwinUMambaD`` (3 -> 14 channels), both with deep
supervision, from JiarunLiu/Swin-UMamba ``swin_umamba/nnunetv2/nets/`` (commit 2c1f72e). They
were dumped once from the official classes on a CPU, with a stand-in ``mamba_ssm`` whose
``selective_scan_fn`` ran this package's pure scan one direction at a time. With the same
weights and that stand-in, the official networks and this port gave equal outputs (every
deep-supervision output, difference 0.0 on the pure path, up to 3e-6 on the numba path) for
2x2x64x96 inputs.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from nnunetv2_segresmamba.networks.swin_umamba import FinalPatchExpand_X4, PatchExpand, SwinUMamba, SwinUMambaD
from nnunetv2_segresmamba.networks.vmamba import VSSMEncoder
from nnunetv2_segresmamba.networks.vmamba_weights import (
    VMAMBA_FILE,
    VMAMBA_URL,
    VMAMBA_WEIGHTS_VAR,
    check_vmamba_file,
    encoder_state_from_vmamba,
    load_vmamba_encoder,
    read_vmamba_weights,
    vmamba_weights_path,
)
from nnunetv2_segresmamba.operators.ss2d import SS2D
from tests.reference import ATOL, GRAD_ATOL, GRAD_RTOL, RTOL, backends_to_test, device_of, reference_scan
from tests.test_umamba import official_shapes  # the official key lists' reader (tests/data)

DATA = os.path.join(os.path.dirname(__file__), "data")
OFFICIAL = {"swin_umamba": lambda: SwinUMamba(1, 14, deep_supervision=True),
            "swin_umamba_d": lambda: SwinUMambaD(3, 14, deep_supervision=True)}



@pytest.mark.parametrize("stem", sorted(OFFICIAL))
def test_state_dict_keys_and_shapes_equal_the_official_model(stem):
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in OFFICIAL[stem]().state_dict().items()}
    assert ours == official_shapes(stem)


def deterministic_state(stem: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights for the official key list ``stem``, drawn in its order from one seed: the same on any
    machine. Weights N(0, 1 / fan_in), norm weights and D near 1, A_log near log(1..N), biases small."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes(stem).items():
        x = torch.randn(shape, generator=g)
        if key.endswith("A_logs"):
            x = torch.log(torch.arange(1.0, shape[1] + 1)) + 0.1 * x
        elif len(shape) == 4:  # conv weights (out, in / groups, k, k); transposed: (in, out, k, k)
            x = x / math.prod(shape[1:]) ** 0.5
        elif len(shape) > 1:  # linear weights, and the stacked per-scan projections: (..., in)
            x = x / shape[-1] ** 0.5
        elif key.endswith("Ds") or ("norm" in key and key.endswith("weight")):
            x = 1 + 0.1 * x
        else:
            x = 0.1 * x
        state[key] = x
    return state


def official_input(stem: str) -> torch.Tensor:
    channels = 1 if stem == "swin_umamba" else 3
    return torch.randn(1, channels, 32, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("backend", ["pure", "numba"])
@pytest.mark.parametrize("stem", sorted(OFFICIAL))
def test_official_weights_load_strictly_and_give_the_official_outputs(stem, backend):
    """``tests/data/swin_umamba_official_outputs.pt``: the official networks' deep-supervision outputs
    for :func:`deterministic_state` and :func:`official_input`, computed once by the official classes
    (the stand-in scan of the module docstring)."""
    net = OFFICIAL[stem]().eval()
    for module in net.modules():
        if isinstance(module, SS2D):
            module.backend = backend
    net.load_state_dict(deterministic_state(stem), strict=True)
    expected = torch.load(os.path.join(DATA, "swin_umamba_official_outputs.pt"), weights_only=True)[stem]
    with torch.no_grad():
        outputs = net(official_input(stem))
    assert len(outputs) == len(expected) == 4
    for ours, theirs in zip(outputs, expected):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- SS2D against VMamba's math


def reference_ss2d(x, p):
    """VMamba's SS2D on (B, H, W, C) from a state_dict-like mapping, its four orders as index lists."""
    batch, height, width, _ = x.shape
    xs, z = (x @ p["in_proj.weight"].T).chunk(2, dim=-1)
    inner = xs.shape[-1]
    u = F.silu(F.conv2d(xs.permute(0, 3, 1, 2), p["conv2d.weight"], p["conv2d.bias"], padding=1, groups=inner))
    u = u.flatten(2)  # (B, E, L), row-major
    rows = list(range(height * width))
    columns = [h * width + w for w in range(width) for h in range(height)]
    rank, states = p["dt_projs_weight"].shape[2], p["A_logs"].shape[1]
    A, D = -torch.exp(p["A_logs"]).view(4, inner, states), p["Ds"].view(4, inner)
    y = 0
    for k, order in enumerate((rows, columns, rows[::-1], columns[::-1])):
        index = torch.tensor(order)
        u_k = u[..., index]
        x_dbl = torch.einsum("bel,ce->bcl", u_k, p["x_proj_weight"][k])
        dt, B, C = x_dbl[:, :rank], x_dbl[:, rank:rank + states], x_dbl[:, rank + states:]
        delta = torch.einsum("brl,er->bel", dt, p["dt_projs_weight"][k])
        y_k = reference_scan(u_k, delta, A[k], B, C, D[k], None, p["dt_projs_bias"][k])
        y = y + torch.zeros_like(y_k).index_copy(-1, index, y_k)
    y = F.layer_norm(y.mT.reshape(batch, height, width, inner), (inner,), p["out_norm.weight"], p["out_norm.bias"])
    return (y * F.silu(z)) @ p["out_proj.weight"].T


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn anew (norm weights near 1), so that no term vanishes at init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if name.endswith("norm.weight") else 0.0))
        module.A_logs.copy_(torch.rand(module.A_logs.shape, generator=g) * 2 - 1)
    return module


@pytest.mark.parametrize("backend", backends_to_test("pure", "numba", "triton"))
@pytest.mark.parametrize("height, width", [(5, 7), (4, 1)])
def test_ss2d_outputs_and_gradients_match_vmamba_math(backend, height, width):
    device = device_of(backend)
    layer = randomized(SS2D(6, d_state=4, backend=backend)).to(device)
    x = torch.randn(2, height, width, 6, device=device, requires_grad=True)
    params = dict(layer.named_parameters())
    ours, expected = layer(x), reference_ss2d(x, params)
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)
    weights = torch.randn_like(expected)
    leaves = [x, *params.values()]
    for name, g_ours, g_ref in zip(["x", *params], torch.autograd.grad((ours * weights).sum(), leaves),
                                   torch.autograd.grad((expected * weights).sum(), leaves)):
        torch.testing.assert_close(g_ours, g_ref, atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=f"gradient of {name}")


def test_ss2d_under_autocast_scans_in_fp32():
    layer = randomized(SS2D(6, d_state=4, backend="numba"))
    x = torch.randn(1, 4, 5, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference_ss2d(x, dict(layer.named_parameters())), atol=0.1, rtol=0.05)


def test_ss2d_parameters_have_vmamba_names_and_init():
    layer = SS2D(96)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {"in_proj.weight": (384, 96), "conv2d.weight": (192, 1, 3, 3), "conv2d.bias": (192,),
                      "x_proj_weight": (4, 38, 192), "dt_projs_weight": (4, 192, 6), "dt_projs_bias": (4, 192),
                      "A_logs": (768, 16), "Ds": (768,), "out_norm.weight": (192,), "out_norm.bias": (192,),
                      "out_proj.weight": (96, 192)}
    assert torch.equal(layer.A_logs, torch.log(torch.arange(1.0, 17.0)).repeat(768, 1))
    dt = F.softplus(layer.dt_projs_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001


# ---------------------------------------------------------------- the networks


@pytest.mark.parametrize("network, scales", [(SwinUMamba, (1, 2, 4, 8)), (SwinUMambaD, (1, 4, 8, 16))])
def test_networks_give_deep_supervision_at_their_scales(network, scales):
    net = network(2, 3, deep_supervision=True, backend="numba")
    outputs = net(torch.randn(1, 2, 32, 64))
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 32 // s, 64 // s) for s in scales]
    net.set_deep_supervision(False)
    assert net(torch.randn(1, 2, 64, 32)).shape == (1, 3, 64, 32)


@pytest.mark.parametrize("network", [SwinUMamba, SwinUMambaD])
def test_inputs_not_a_multiple_of_32_are_refused_with_advice(network):
    with pytest.raises(ValueError, match=r"multiples of 32.*trainers round the planned patch"):
        network(1, 2, backend="pure")(torch.randn(1, 1, 48, 64))


def test_patch_expanding_spreads_each_token_over_its_patch():
    """Output pixel (s h + i, s w + j) holds the token's values (i s + j) C_out .. + C_out, normed."""
    for expand, scale in ((PatchExpand(8), 2), (FinalPatchExpand_X4(4), 4)):
        x = torch.randn(2, expand.expand.in_features, 3, 5)
        tokens = expand.expand(x.permute(0, 2, 3, 1))
        c = expand.out_dim
        out = expand(x)
        for i in range(scale):
            for j in range(scale):
                expected = expand.norm(tokens[..., (i * scale + j) * c:(i * scale + j + 1) * c])
                torch.testing.assert_close(out[:, i::scale, j::scale], expected)


def test_the_dagger_is_he_initialised_and_the_encoder_as_vmamba():
    net = SwinUMambaD(1, 2)
    conv = net.decoder.seg_layers[0]
    assert torch.all(conv.bias == 0) and 0.5 < conv.weight.std() * (384**0.5) / 2**0.5 < 1.5  # kaiming normal
    encoder = net.vssm_encoder  # VMamba's: Linear weights truncated normal, std 0.02 (nn.Linear's: 1/sqrt(3 fan_in))
    for linear in (encoder.downsamples[0].reduction, encoder.layers[2].blocks[0].self_attention.in_proj,
                   encoder.layers[0].blocks[1].self_attention.out_proj):
        assert 0.018 < linear.weight.std() < 0.022, linear


# ---------------------------------------------------------------- VMamba's ImageNet checkpoints


def vmamba_checkpoint(path, seed=0, drop=(), reshape=()) -> dict:
    """A checkpoint laid out as VMamba's training writes it: {"model": VSSM's state_dict (its patch
    merging under ``layers.N.downsample``, its classifier ``norm`` and ``head``), "config": a yacs
    CfgNode, ...}, from a VMamba-Tiny encoder with random weights. Keys in ``drop`` are left out
    and those in ``reshape`` get another shape. Returns the model state."""
    torch.manual_seed(seed)
    encoder = VSSMEncoder(patch_size=4, in_chans=3, backend="pure")
    model = {}
    for key, value in encoder.state_dict().items():
        for i in range(3):
            key = key.replace(f"downsamples.{i}.", f"layers.{i}.downsample.")
        model[key] = torch.randn(value.shape)
    model.update({"norm.weight": torch.ones(768), "norm.bias": torch.zeros(768), "head.weight": torch.randn(1000, 768),
                  "head.bias": torch.zeros(1000)})
    for key in drop:
        del model[key]
    for key in reshape:
        model[key] = torch.randn(3, 3)
    torch.save({"model": model, "config": yacs_config({"MODEL": {"TYPE": "vssm", "NAME": "vssm_tiny"}}),
                "epoch": 292, "max_accuracy": 82.5}, path)
    return model


def yacs_config(values: dict):
    """An object that pickles as yacs' CfgNode (a dict subclass with attributes), without yacs."""
    module = types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, init):
            super().__init__({k: CfgNode(v) if isinstance(v, dict) else v for k, v in init.items()})
            self.__dict__["__immutable__"] = True

    CfgNode.__module__, CfgNode.__qualname__, module.CfgNode = "yacs.config", "CfgNode", CfgNode
    sys.modules.setdefault("yacs", types.ModuleType("yacs"))
    sys.modules["yacs.config"] = module
    return CfgNode(values)


@pytest.fixture
def no_yacs():
    yield
    sys.modules.pop("yacs.config", None), sys.modules.pop("yacs", None)


def test_a_vmamba_checkpoint_fills_every_encoder_tensor_but_a_patch_embedding_that_differs(tmp_path, no_yacs):
    path = str(tmp_path / VMAMBA_FILE)
    model = vmamba_checkpoint(path)
    sys.modules.pop("yacs.config"), sys.modules.pop("yacs")  # read without yacs
    weights = read_vmamba_weights(path)
    dagger = SwinUMambaD(3, 2, backend="pure").vssm_encoder
    loaded = encoder_state_from_vmamba(weights, dagger)
    assert set(loaded.state) == set(dagger.state_dict()) and set(loaded.skipped) == {"norm.weight", "norm.bias",
                                                                                      "head.weight", "head.bias"}
    assert torch.equal(loaded.state["downsamples.2.reduction.weight"], model["layers.2.downsample.reduction.weight"])
    swin = SwinUMamba(1, 2, backend="pure").vssm_encoder  # embeds 48 stem channels in 2x2 patches
    loaded = encoder_state_from_vmamba(weights, swin)
    assert {k for k in swin.state_dict() if k not in loaded.state} == {
        "patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias"}
    report = check_vmamba_file(path)
    assert "sha256 " in report and "Swin-UMamba: 204 of 208 encoder tensors" in report and report.endswith("file.")
    result = load_vmamba_encoder(swin, path)
    assert torch.equal(swin.downsamples[2].reduction.weight, model["layers.2.downsample.reduction.weight"])
    assert result.kept == tuple(sorted({k for k in swin.state_dict() if k.startswith("patch_embed.")}))
    assert len(result.loaded) == 204 and result.sha256 == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert result.summary().startswith(f"VMamba ImageNet weights: 204 of the encoder's 208 tensors from {path}")


@pytest.mark.parametrize("change, message", [
    ({"drop": ["layers.2.blocks.8.self_attention.Ds"]}, r"encoder tensors it lacks: layers\.2\.blocks\.8"),
    ({"reshape": ["layers.1.downsample.norm.weight"]}, r"shapes that differ: downsamples\.1\.norm\.weight \(3, 3\)"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_tensors(tmp_path, no_yacs, change, message):
    path = str(tmp_path / "other.pth")
    vmamba_checkpoint(path, **change)
    with pytest.raises(ValueError, match=message):
        encoder_state_from_vmamba(read_vmamba_weights(path), VSSMEncoder(backend="pure"))


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=f"(?s)not a readable VMamba checkpoint.*{VMAMBA_FILE}"):
        read_vmamba_weights(str(path))
    torch.save({"model": {"a": "string"}}, str(path))
    with pytest.raises(ValueError, match="holds no state_dict"):
        read_vmamba_weights(str(path))


def test_the_weights_variable_unset_or_wrong_says_where_to_download(monkeypatch, tmp_path):
    monkeypatch.delenv(VMAMBA_WEIGHTS_VAR, raising=False)
    with pytest.raises(OSError, match=f"(?s){VMAMBA_WEIGHTS_VAR} is not set.*{VMAMBA_FILE}.*wget.*Scratch"):
        vmamba_weights_path()
    monkeypatch.setenv(VMAMBA_WEIGHTS_VAR, str(tmp_path / "missing.pth"))
    with pytest.raises(OSError, match="missing.pth: no such file") as error:
        vmamba_weights_path()
    assert VMAMBA_URL in str(error.value)


def test_the_check_command_reports_a_good_file_and_explains_a_missing_one(tmp_path, monkeypatch, capsys, no_yacs):
    from nnunetv2_segresmamba.cli import main

    path = str(tmp_path / VMAMBA_FILE)
    vmamba_checkpoint(path)
    monkeypatch.setenv(VMAMBA_WEIGHTS_VAR, path)
    assert main(["check-vmamba"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(path) and "Swin-UMamba-dagger, 3 input channels: 208 of 208 encoder tensors" in out
    monkeypatch.delenv(VMAMBA_WEIGHTS_VAR)
    assert main(["check-vmamba"]) == 1
    assert f"{VMAMBA_WEIGHTS_VAR} is not set" in capsys.readouterr().err
    vmamba_checkpoint(path, drop=["patch_embed.norm.bias"])
    assert main(["check-vmamba", path]) == 1
    assert "encoder tensors it lacks: patch_embed.norm.bias" in capsys.readouterr().err
