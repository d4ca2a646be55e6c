"""SegResMamba: shapes at odd sizes, per-axis strides, bf16 autocast, errors, weight portability."""

import pytest
import torch

from nnunetv2_segresmamba.networks import SegResMamba
from nnunetv2_segresmamba.networks.segresmamba import check_patch_size, plan_strides

PAPER_PARAMS_M = 119.98  # Table 7; our build from the paper's text has fewer, see README


def small_net(in_channels=1, out_channels=3, **kwargs):
    return SegResMamba(in_channels, out_channels, feature_sizes=(8, 16, 16, 32), **kwargs)


def test_default_constructor_is_the_paper_network():
    net = SegResMamba(in_channels=1, out_channels=14)
    params = sum(p.numel() for p in net.parameters())
    assert params == 73_548_350, f"parameter count changed: {params}"
    assert net.size_divisor == (32, 32, 32)


@pytest.mark.parametrize("size", [(33, 47, 21), (16, 16, 16), (40, 8, 24)])
def test_output_has_input_size_at_odd_sizes(size):
    net = small_net(in_channels=2, out_channels=5).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, *size)).shape == (1, 5, *size)


def test_anisotropic_patch_gets_per_axis_strides_and_no_padding():
    stage, block = plan_strides((40, 224, 192))
    assert stage == [(2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert block == [(2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2)]
    net = SegResMamba.for_patch_size(1, 2, (20, 32, 24), feature_sizes=(8, 16, 16, 32))
    assert net.size_divisor == (4, 16, 8)
    out = net(torch.randn(1, 1, 20, 32, 24))
    assert out.shape == (1, 2, 20, 32, 24)
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_planned_strides_need_no_padding_for_nnunet_patches():
    for patch in [(128, 128, 128), (96, 160, 160), (40, 224, 192), (32, 48, 48), (16, 32, 32), (20, 320, 256)]:
        stage, block = plan_strides(patch)
        net = SegResMamba(1, 2, feature_sizes=(8, 16, 16, 32), stage_strides=stage, block_strides=block)
        assert all(s % d == 0 and s // d >= 2 for s, d in zip(patch, net.size_divisor)), patch


def test_finite_outputs_under_bf16_autocast():
    """Outputs only: on CPU, oneDNN's bf16 Conv3d weight gradients turn NaN now and then even for
    a lone nn.Conv3d (torch 2.14.1), so AMP training stability is checked on a GPU instead."""
    torch.manual_seed(0)
    net = SegResMamba.for_patch_size(1, 3, (16, 32, 32), feature_sizes=(16, 32, 32, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(2, 1, 16, 32, 32) * 100)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


def test_pure_and_numba_paths_share_weights_and_agree():
    """One state_dict, two implementations: the same logits and gradients at an odd size.

    Conv biases right before an InstanceNorm have a zero gradient up to rounding noise, so
    they are left out; every weight, every ToM parameter and the input gradient are compared.
    """
    torch.manual_seed(0)
    strides = {"stage_strides": [(2, 2, 2)] * 2 + [(1, 1, 1)] * 2, "block_strides": [(2, 2, 2)] + [(1, 1, 1)] * 3}
    numba_net = small_net(backend="numba", **strides)  # size divisor 4: a (9, 7, 10) input runs padded to (12, 8, 12)
    pure_net = small_net(backend="pure", **strides)
    pure_net.load_state_dict(numba_net.state_dict(), strict=True)
    x = torch.randn(1, 1, 9, 7, 10, requires_grad=True)
    outputs = [net(x) for net in (pure_net, numba_net)]
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-4, rtol=1e-4)
    weights = torch.linspace(-1, 1, outputs[0].numel()).view_as(outputs[0])
    grads = [torch.autograd.grad((out * weights).sum(), [x, *net.parameters()]) for out, net in
             zip(outputs, (pure_net, numba_net))]
    names = ["input", *(name for name, _ in pure_net.named_parameters())]
    for name, g_pure, g_numba in zip(names, *grads):
        if name.endswith(".bias") and "mamba." not in name:
            continue
        error = ((g_numba - g_pure).norm() / g_pure.norm()).item()
        assert error < 1e-4, f"gradient of {name} differs by {error:.1e} (relative norm)"


@pytest.mark.parametrize(
    "patch,match",
    [((64, 64), "3D network"), ((8, 64, 64), "too small"), ((64, 64, 64, 2), "3D network")],
)
def test_unusable_patch_sizes_say_what_to_do(patch, match):
    with pytest.raises(ValueError, match=match):
        check_patch_size(patch)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="4 widths"):
        SegResMamba(1, 2, feature_sizes=(8, 16))
    with pytest.raises(ValueError, match="triples of 1 or 2"):
        SegResMamba(1, 2, stage_strides=[(3, 2, 2)] * 4)
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        small_net()(torch.randn(1, 1, 16, 16))
