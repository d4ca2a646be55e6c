"""U-Mamba port: official state_dict layout, the official constructors' rules, the Mamba layer
against a plain reference of the official math.

``tests/data/umamba_{bot,enc}_{3d,2d}_official_state_dict.txt`` list ``key shape`` of the
official ``UMambaBot``/``UMambaEnc`` (bowang-lab/U-Mamba ``umamba/nnunetv2/nets/``, commit
28459e3) for 1 -> 14 channels at the plans in :data:`OFFICIAL_PLANS`, with deep supervision.
They were dumped once from the official classes, built on a CPU with a stand-in ``mamba_ssm``
module whose ``Mamba`` was this package's forward-only ToM (mamba_ssm's parameter names,
checked in tests/test_tom.py), and dynamic-network-architectures 0.4 for ``BasicBlockD``.
With the same weights and that stand-in, the official networks and this port gave equal
logits (every deep-supervision output, difference 0.0) for Bot and Enc, 2D (2x1x64x64, 5
stages) and 3D (2x1x16x32x32, 4 stages, anisotropic kernels, a channel-token stage in Enc).

``tests/data/umamba_{bot,enc}_{3d,2d}_official_outputs.pt`` hold, for the small plans of
:data:`SMALL_OFFICIAL` (2 -> 3 channels), the official network's key list (``shapes``) and its
deep-supervision outputs for :func:`deterministic_weights` of that list and
:func:`small_official_input`. They were computed once (commit 28459e3, CPU) by the official classes
with another stand-in ``mamba_ssm``, independent of this package: its ``Mamba`` has mamba_ssm's
parameters, and its forward is mamba_ssm's ``Mamba.forward`` written plainly with
tests/reference.py's loop scan (``reference_mamba_direction``).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from nnunetv2_segresmamba.networks.umamba import (
    UMambaBot,
    UMambaEnc,
    UMambaLayer,
    arch_kwargs_for_plan,
    official_block_counts,
)
from tests.reference import (
    assert_outputs_and_gradients_match,
    backends_to_test,
    device_of,
    reference_mamba_direction,
)

DATA = os.path.join(os.path.dirname(__file__), "data")
ISO_3D = {"features_per_stage": [32, 64, 128, 256, 320, 320], "kernel_sizes": [[3, 3, 3]] * 6,
          "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5, "n_blocks_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5}
ANISO_3D = {"features_per_stage": [32, 64, 128, 256, 320, 320, 320],
            "kernel_sizes": [[1, 3, 3], [1, 3, 3]] + [[3, 3, 3]] * 5,
            "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2], [1, 2, 2]],
            "n_blocks_per_stage": [2] * 7, "n_conv_per_stage_decoder": [2] * 6}
PLAN_2D = {"features_per_stage": [32, 64, 128, 256, 512, 512, 512], "kernel_sizes": [[3, 3]] * 7,
           "strides": [[1, 1]] + [[2, 2]] * 6, "n_blocks_per_stage": [2] * 7, "n_conv_per_stage_decoder": [2] * 6}
OFFICIAL_PLANS = {  # file stem: (class, input_size or None, plan)
    "umamba_bot_3d": (UMambaBot, None, ISO_3D),
    "umamba_enc_3d": (UMambaEnc, (20, 320, 256), ANISO_3D),
    "umamba_bot_2d": (UMambaBot, None, PLAN_2D),
    "umamba_enc_2d": (UMambaEnc, (512, 512), PLAN_2D),
}


# Small plans whose outputs the official classes computed (tests/data/umamba_*_official_outputs.pt):
# 3D with anisotropic kernels and strides, Enc's last stage (2x3x3 voxels, 64 channels) scanning
# channels; 2D with five stages, Enc's last (3x4) scanning channels too.
SMALL_3D = {"features_per_stage": [8, 16, 32, 64], "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * 3,
            "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], "n_blocks_per_stage": [2] * 4,
            "n_conv_per_stage_decoder": [2] * 3}
SMALL_2D = {"features_per_stage": [8, 16, 32, 64, 64], "kernel_sizes": [[3, 3]] * 5,
            "strides": [[1, 1]] + [[2, 2]] * 4, "n_blocks_per_stage": [2] * 5, "n_conv_per_stage_decoder": [2] * 4}
SMALL_OFFICIAL = {  # file stem: (class name, input_size or None, plan); 2 -> 3 channels, deep supervision
    "umamba_bot_3d": ("UMambaBot", None, SMALL_3D),
    "umamba_enc_3d": ("UMambaEnc", (8, 24, 24), SMALL_3D),
    "umamba_bot_2d": ("UMambaBot", None, SMALL_2D),
    "umamba_enc_2d": ("UMambaEnc", (48, 64), SMALL_2D),
}


def official_shapes(stem: str) -> dict[str, tuple[int, ...]]:
    with open(os.path.join(DATA, f"{stem}_official_state_dict.txt")) as f:
        rows = [line.split() for line in f if line.strip()]
    return {key: tuple(int(s) for s in shape.split("x")) for key, shape in rows}


def build(stem: str, **kwargs) -> torch.nn.Module:
    cls, size, plan = OFFICIAL_PLANS[stem]
    sizes = {"input_size": size} if size else {}
    with torch.device("meta"):
        return cls(1, 14, **sizes, **plan, deep_supervision=True, **kwargs)


def deterministic_weights(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights for a key list (``key: shape``, in its order), drawn from one seed: the same on any
    machine. Weights N(0, 1 / fan_in), norm weights and D near 1, A_log near log(1..N), biases small."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        x = torch.randn(shape, generator=g)
        if key.endswith("A_log"):
            x = torch.log(torch.arange(1.0, shape[1] + 1)) + 0.1 * x
        elif len(shape) > 1:  # conv and linear weights: (out, in, k...); transposed convs (in, out, k...)
            x = x / math.prod(shape[1:]) ** 0.5
        elif key.endswith(".D") or ("norm" in key and key.endswith("weight")):
            x = 1 + 0.1 * x
        else:
            x = 0.1 * x
        state[key] = x
    return state


def small_official_input(stem: str) -> torch.Tensor:
    _, size, plan = SMALL_OFFICIAL[stem]
    size = size or ((8, 24, 24) if len(plan["kernel_sizes"][0]) == 3 else (48, 64))
    return torch.randn(1, 2, *size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("backend", ["pure", "numba"])
@pytest.mark.parametrize("stem", sorted(SMALL_OFFICIAL))
def test_official_weights_load_strictly_and_give_the_official_outputs(stem, backend):
    """``tests/data/{stem}_official_outputs.pt``: the official network's key list (``shapes``) and its
    deep-supervision outputs for :func:`deterministic_weights` of that list and
    :func:`small_official_input`, computed once by the official classes (the stand-in of the module
    docstring). Our port takes those weights with strict keys and gives those outputs."""
    cls_name, size, plan = SMALL_OFFICIAL[stem]
    official = torch.load(os.path.join(DATA, f"{stem}_official_outputs.pt"), weights_only=True)
    sizes = {"input_size": size} if size else {}
    net = {"UMambaBot": UMambaBot, "UMambaEnc": UMambaEnc}[cls_name](2, 3, **sizes, **plan, deep_supervision=True,
                                                                      backend=backend).eval()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == official["shapes"]
    net.load_state_dict(deterministic_weights(official["shapes"]), strict=True)
    with torch.no_grad():
        outputs = net(small_official_input(stem))
    assert len(outputs) == len(official["outputs"]) == len(plan["strides"]) - 1
    for ours, theirs in zip(outputs, official["outputs"]):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("stem", sorted(OFFICIAL_PLANS))
def test_state_dict_keys_and_shapes_equal_the_official_model(stem):
    ours = {k: tuple(v.shape) for k, v in build(stem).state_dict().items()}
    assert ours == official_shapes(stem)


@pytest.mark.parametrize("stem", ["umamba_bot_3d", "umamba_enc_2d"])
def test_official_checkpoint_layout_loads_strictly(stem):
    cls, size, plan = OFFICIAL_PLANS[stem]
    net = cls(1, 14, **({"input_size": size} if size else {}), **plan, deep_supervision=True)
    net.load_state_dict({k: torch.zeros(s) for k, s in official_shapes(stem).items()}, strict=True)


def test_block_counts_follow_the_official_constructors():
    assert official_block_counts([2] * 6, [2] * 5) == ([2, 2, 2, 1, 1, 1], [2, 2, 2, 1, 1])
    assert official_block_counts([2] * 7, [2] * 6) == ([2, 2, 2, 2, 1, 1, 1], [2, 2, 2, 2, 1, 1])
    assert official_block_counts([1, 3, 4, 6, 6, 6], [1] * 5) == ([1, 3, 4, 1, 1, 1], [1] * 5)  # ResEnc M plans


def test_enc_scans_channels_where_the_map_is_small_and_2d_skips_every_other_stage():
    enc3 = build("umamba_enc_3d")
    tokens = [(type(m).__name__, getattr(m, "channel_token", None), getattr(m, "dim", None))
              for m in enc3.encoder.mamba_layers]
    # maps (20,320,256) (20,160,128) (10,80,64) (5,40,32) (5,20,16) (5,10,8) (5,5,4): only the last <= 320 voxels
    assert tokens == [("UMambaLayer", False, c) for c in (32, 64, 128, 256, 320, 320)] + [("UMambaLayer", True, 100)]
    enc2 = build("umamba_enc_2d")
    kinds = [type(m).__name__ for m in enc2.encoder.mamba_layers]
    assert kinds == ["UMambaLayer", "Identity"] * 3 + ["UMambaLayer"]  # 7 stages: 0, 2, 4, 6
    assert enc2.encoder.mamba_layers[6].channel_token and enc2.encoder.mamba_layers[6].dim == 64  # 8 x 8 <= 512


def small(cls, spatial_dims: int, **kwargs) -> torch.nn.Module:
    if spatial_dims == 3:
        plan = {"features_per_stage": [8, 16, 32, 32], "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * 3,
                "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], "n_blocks_per_stage": [2] * 4,
                "n_conv_per_stage_decoder": [2] * 3}
    else:
        plan = {"features_per_stage": [8, 16, 32], "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [1, 2]],
                "n_blocks_per_stage": [2] * 3, "n_conv_per_stage_decoder": [2] * 2}
    return cls(2, 3, **plan, **kwargs)


@pytest.mark.parametrize("spatial_dims, size", [(3, (8, 24, 40)), (2, (12, 20))])
def test_forward_shapes_with_and_without_deep_supervision(spatial_dims, size):
    x = torch.randn(2, 2, *size)
    for net in (small(UMambaBot, spatial_dims, backend="pure"), small(UMambaEnc, spatial_dims, input_size=size)):
        net.decoder.deep_supervision = True
        outputs = net(x)
        assert [tuple(o.shape) for o in outputs][0] == (2, 3, *size)
        assert len(outputs) == len(net.encoder.stages) - 1
        net.decoder.deep_supervision = False
        assert net(x).shape == (2, 3, *size)


def test_enc_refuses_another_input_size_with_advice():
    net = small(UMambaEnc, 3, input_size=(8, 16, 16))  # deepest map 2 x 2 x 2 <= 32 channels: channel tokens
    with pytest.raises(ValueError, match="input_size"):
        net(torch.randn(1, 2, 8, 32, 32))


def test_no_mamba_control_has_no_mamba_parameters():
    net = small(UMambaBot, 3, mamba=False)
    assert isinstance(net.mamba_layer, torch.nn.Identity)
    assert not [k for k in net.state_dict() if k.startswith("mamba_layer")]
    assert net.arch_kwargs["mamba"] is False


def test_arch_kwargs_from_default_and_resenc_plans():
    default = {"n_stages": 3, "features_per_stage": (32, 64, 128), "kernel_sizes": ((3, 3), (3, 3), (3, 3)),
               "strides": ((1, 1), (2, 2), (2, 2)), "n_conv_per_stage": (2, 2, 2), "n_conv_per_stage_decoder": (2, 2)}
    resenc = {**{k: v for k, v in default.items() if k != "n_conv_per_stage"}, "n_blocks_per_stage": (1, 3, 4),
              "n_conv_per_stage_decoder": (1, 1)}
    assert arch_kwargs_for_plan(default) == {"features_per_stage": [32, 64, 128], "kernel_sizes": [[3, 3]] * 3,
                                             "strides": [[1, 1], [2, 2], [2, 2]], "n_blocks_per_stage": [2, 2, 2],
                                             "n_conv_per_stage_decoder": [2, 2]}
    assert arch_kwargs_for_plan(resenc)["n_blocks_per_stage"] == [1, 3, 4]
    with pytest.raises(ValueError, match="n_conv_per_stage"):
        arch_kwargs_for_plan({"features_per_stage": (32,)})


def official_mamba_layer(x: torch.Tensor, layer: UMambaLayer) -> torch.Tensor:
    """U-Mamba's ``MambaLayer.forward`` as the official code reads, with autocast off: the input
    in fp32, (B, C, *spatial) flattened to tokens (positions, or channels with channel_token),
    LayerNorm over each token, mamba_ssm's ``Mamba.forward`` (in_proj, one direction,
    out_proj) with the plain loop scan of tests/reference.py, no residual."""
    params = dict(layer.mamba.named_parameters())
    batch, channels, *spatial = x.shape
    flat = x.float().reshape(batch, channels, -1)
    tokens = flat if layer.channel_token else flat.transpose(-1, -2)  # (B, T, width)
    mean = tokens.mean(-1, keepdim=True)
    var = ((tokens - mean) ** 2).mean(-1, keepdim=True)
    normed = (tokens - mean) / torch.sqrt(var + 1e-5) * layer.norm.weight + layer.norm.bias
    xz = torch.einsum("btw,ew->bet", normed, params["in_proj.weight"])  # (B, 2E, T)
    y = torch.einsum("bet,we->btw", reference_mamba_direction(xz, params, ""), params["out_proj.weight"])
    return y.reshape(batch, channels, *spatial) if layer.channel_token else y.transpose(-1, -2).reshape(x.shape)


@pytest.mark.parametrize("backend", backends_to_test("pure", "numba", "triton"))
@pytest.mark.parametrize("shape, channel_token", [((2, 6, 3, 5, 7), False), ((2, 9, 1, 2, 3), True),
                                                   ((1, 5, 7, 3), False), ((2, 11, 2, 3), True)])
def test_mamba_layer_equals_the_official_math(backend, shape, channel_token):
    torch.manual_seed(0)
    batch, channels, *spatial = shape
    dim = int(torch.tensor(spatial).prod()) if channel_token else channels
    layer = UMambaLayer(dim, channel_token, backend=backend).to(device_of(backend))
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(shape, device=device_of(backend), requires_grad=True)
    mamba = layer.mamba
    inputs = {"x": x, "norm.weight": layer.norm.weight, "in_proj": mamba.in_proj.weight, "A_log": mamba.A_log,
              "dt_proj.bias": mamba.dt_proj.bias, "conv1d": mamba.conv1d.weight, "out_proj": mamba.out_proj.weight}
    assert_outputs_and_gradients_match(layer(x), official_mamba_layer(x, layer), inputs)


def test_mamba_layer_runs_in_fp32_under_autocast():
    layer = UMambaLayer(6, backend="pure")
    x = torch.randn(1, 6, 2, 3, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, layer(x.float()), rtol=0, atol=0)


def test_he_initialisation_as_the_official_builders():
    net = small(UMambaBot, 3).initialize()
    conv = net.encoder.stem[0].conv1
    assert torch.all(conv.bias == 0)
    fan_in = conv.weight[0].numel()
    expected_std = (2.0 / (1 + 1e-4) / fan_in) ** 0.5  # kaiming_normal_ with a = 1e-2
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.25
    assert not torch.all(net.mamba_layer.mamba.conv1d.bias == 0)  # Conv1d is not He-initialised (as nnU-Net)
