"""SegResMamba: shapes at odd sizes, per-axis strides, bf16 autocast, errors, weight portability."""

import tempfile

import pytest
import torch

from nnunetv2_segresmamba.networks import SegResMamba
from nnunetv2_segresmamba.networks.planning import plan_pools
from nnunetv2_segresmamba.networks.segresmamba import check_patch_size, strides_from_pools
from tests.reference import backends_to_test, device_of

PAPER_PARAMS_M = 119.98  # Table 7; our build from the paper's text has fewer, see documentation/network.md


def small_net(in_channels=1, out_channels=3, **kwargs):
    return SegResMamba(in_channels, out_channels, feature_sizes=(8, 16, 16, 32), **kwargs)


def test_default_constructor_is_the_paper_network():
    with torch.device("meta"):
        net = SegResMamba(in_channels=1, out_channels=14)
    params = sum(p.numel() for p in net.parameters())
    assert params == 73_548_350, f"parameter count changed: {params}"
    assert net.size_divisor == (32, 32, 32)


@pytest.mark.parametrize("size", [(33, 47, 21), (16, 16, 16), (40, 8, 24)])
def test_output_has_input_size_at_odd_sizes(size):
    net = small_net(in_channels=2, out_channels=5).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, *size)).shape == (1, 5, *size)


def test_strides_follow_nnunet_pooling_in_plane_first():
    pools = plan_pools((20, 320, 256), spacing=(3.0, 0.8, 0.8))
    assert pools[:6] == [(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2)]  # and a 6th pool
    stage, block = strides_from_pools(pools)
    assert stage == [(1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)]  # stem = p1, downsamplings = p2..p4
    assert block == [(2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2)]  # block i halves as stage i + 1; last = p5
    assert strides_from_pools([(1, 1, 1), (2, 2, 2)]) == ([(2, 2, 2)] + [(1, 1, 1)] * 3, [(1, 1, 1)] * 4)
    net = SegResMamba.for_patch_size(1, 2, (20, 32, 24), spacing=(3.0, 0.8, 0.8), feature_sizes=(8, 16, 16, 32))
    out = net(torch.randn(1, 1, 20, 32, 24))
    assert out.shape == (1, 2, 20, 32, 24)
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_isotropic_128_is_the_paper_network():
    stage, block = strides_from_pools(plan_pools((128, 128, 128)))
    assert stage == block == [(2, 2, 2)] * 4


def test_planned_strides_need_no_padding_for_nnunet_patches():
    for patch in [(128, 128, 128), (96, 160, 160), (40, 224, 192), (32, 48, 48), (16, 32, 32), (20, 320, 256)]:
        net = SegResMamba.for_patch_size(1, 2, patch, feature_sizes=(8, 16, 16, 32))
        assert all(s % d == 0 and s // d >= 1 for s, d in zip(patch, net.size_divisor)), patch


@pytest.mark.parametrize("patch", [(1, 1, 2), (1, 16, 16), (5, 16, 16), (8, 16, 16)])
def test_thin_patches_train_forward_and_backward(patch):
    """The smallest patches :func:`check_patch_size` accepts, strided as nnU-Net pools them."""
    net = SegResMamba.for_patch_size(1, 2, patch, feature_sizes=(8, 16, 16, 32))
    out = net(torch.randn(2, 1, *patch))
    assert out.shape == (2, 2, *patch)
    out.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_finite_outputs_under_bf16_autocast():
    """Outputs only: on CPU, oneDNN's bf16 Conv3d weight gradients turn NaN now and then even for
    a lone nn.Conv3d (torch 2.14.1), so AMP training stability is checked on a GPU instead."""
    torch.manual_seed(0)
    net = SegResMamba.for_patch_size(1, 3, (16, 32, 32), feature_sizes=(16, 32, 32, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(2, 1, 16, 32, 32) * 100)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


# widths and an odd input size per fused backend: smaller in Triton's interpreter, which is slow
FUSED_CASES = {"numba": ((8, 16, 16, 32), (9, 7, 10)), "triton": ((8, 8, 8, 8), (3, 4, 2))}


@pytest.mark.parametrize("fused", backends_to_test(*FUSED_CASES))
def test_the_pure_and_fused_paths_share_weights_and_agree(fused):
    """One state_dict, two implementations: the same logits and gradients at an odd size.

    Conv biases right before an InstanceNorm have a zero gradient up to rounding noise, so
    they are left out; every weight, every ToM parameter and the input gradient are compared.
    """
    torch.manual_seed(0)
    device = device_of(fused)
    widths, size = FUSED_CASES[fused]
    strides = {"stage_strides": [(2, 2, 2)] * 2 + [(1, 1, 1)] * 2, "block_strides": [(2, 2, 2)] + [(1, 1, 1)] * 3}
    nets = [SegResMamba(1, 3, feature_sizes=widths, backend=backend, **strides).to(device)
            for backend in ("pure", fused)]  # size divisor 4: inputs run padded to multiples of 4
    pure_net, fused_net = nets
    pure_net.load_state_dict(fused_net.state_dict(), strict=True)
    x = torch.randn(1, 1, *size, device=device, requires_grad=True)
    outputs = [net(x) for net in (pure_net, fused_net)]
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-4, rtol=1e-4)
    weights = torch.linspace(-1, 1, outputs[0].numel(), device=device).view_as(outputs[0])
    grads = [torch.autograd.grad((out * weights).sum(), [x, *net.parameters()]) for out, net in
             zip(outputs, (pure_net, fused_net))]
    names = ["input", *(name for name, _ in pure_net.named_parameters())]
    for name, g_pure, g_fused in zip(names, *grads):
        if name.endswith(".bias") and "mamba." not in name:
            continue
        error = ((g_fused - g_pure).norm() / g_pure.norm()).item()
        assert error < 1e-4, f"gradient of {name} differs by {error:.1e} (relative norm)"


@pytest.mark.parametrize(
    "patch,divisor,match",
    [((64, 64), (1, 1, 1), "spatial_dims=2"), ((64, 64, 64, 2), (1, 1, 1, 1), "2D or 3D network"),
     ((24, 64, 64), (16, 32, 32), "multiple of"), ((1, 1, 1), (1, 1, 1), "single voxel"),
     ((16, 32, 32), (16, 32, 32), r"keep 2 voxels.*e\.g\. \[32, 64, 64\]"),
     ((64, 32, 32), (32, 32, 32), r"e\.g\. \[64, 64, 64\]")],
)
def test_unusable_patch_sizes_say_what_to_change_in_the_plans(patch, divisor, match):
    with pytest.raises(ValueError, match=match) as error:
        check_patch_size(patch, divisor)
    if len(patch) == 3:
        assert "'patch_size'" in str(error.value) and "pool_op_kernel_sizes" in str(error.value)
    elif len(patch) == 4:
        assert "3d_fullres" in str(error.value)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="4 widths"):
        SegResMamba(1, 2, feature_sizes=(8, 16))
    with pytest.raises(ValueError, match="triples of 1 or 2"):
        SegResMamba(1, 2, stage_strides=[(3, 2, 2)] * 4)
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        small_net()(torch.randn(1, 1, 16, 16))


# 2D: the same network over (B, C, H, W)

def test_2d_network_has_the_3d_parameter_names():
    """Every tensor has the 3D network's name; convolution kernels lose one axis, the ToM's tensors
    (which do not depend on the dimensionality) keep their shapes."""
    with torch.device("meta"):
        net3, net2 = SegResMamba(1, 14), SegResMamba(1, 14, spatial_dims=2)
    shapes3 = {k: v.shape for k, v in net3.state_dict().items()}
    shapes2 = {k: v.shape for k, v in net2.state_dict().items()}
    assert shapes2.keys() == shapes3.keys()
    for name, shape in shapes3.items():
        if ".mamba." in name or len(shape) < 3:  # the ToM, biases, norms
            assert shapes2[name] == shape, name
        else:  # conv kernels: (out, in, k, k, k) -> (out, in, k, k)
            assert shapes2[name] == shape[:-1], name
    assert sum(p.numel() for p in net2.parameters()) == 20_788_382
    assert net2.size_divisor == (32, 32) and net2.arch_kwargs["spatial_dims"] == 2


@pytest.mark.parametrize("size", [(33, 47), (16, 16), (8, 40)])
def test_2d_output_has_input_size_at_odd_sizes(size):
    net = small_net(in_channels=2, out_channels=5, spatial_dims=2).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, *size)).shape == (1, 5, *size)


def test_2d_strides_follow_nnunets_2d_plan_and_train():
    pools = plan_pools((40, 24), spacing=(1.0, 2.0))
    assert pools == [(1, 1), (2, 1), (2, 2), (2, 2)]  # nnU-Net pools the finer axis first
    stage, block = strides_from_pools(pools)
    assert stage == [(2, 1), (2, 2), (2, 2), (1, 1)] and block == [(2, 2), (2, 2), (1, 1), (1, 1)]
    net = SegResMamba.for_patch_size(1, 2, (40, 24), spacing=(1.0, 2.0), feature_sizes=(8, 16, 16, 32))
    assert net.spatial_dims == 2 and net.size_divisor == (8, 4)
    out = net(torch.randn(2, 1, 40, 24))
    assert out.shape == (2, 2, 40, 24)
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_2d_inter_row_scan_is_a_forward_scan_down_the_columns():
    """In 2D the ToM's inter-slice direction visits one column of every row in turn: with only
    that direction, the layer equals a forward-only layer (the same weights) applied to the
    transposed image."""
    from nnunetv2_segresmamba.operators.tom import MambaLayer

    torch.manual_seed(0)
    inter_row = MambaLayer(8, d_state=4, backend="pure", directions=("_s",))
    forward = MambaLayer(8, d_state=4, backend="pure", directions=("",))
    forward.load_state_dict({k.replace("_s", ""): v for k, v in
                             inter_row.state_dict().items()})
    x = torch.randn(2, 8, 6, 5)  # (B, C, H, W): 6 rows of 5
    torch.testing.assert_close(inter_row(x), forward(x.transpose(-1, -2)).transpose(-1, -2))


def test_the_deepest_map_rule_is_one_for_padding_and_patch_checks():
    from nnunetv2_segresmamba.networks.blocks import pad_to_multiple, padded_size

    assert padded_size((64, 32, 32), (32, 32, 32)) == [64, 64, 64]
    assert padded_size((1, 1, 2), (1, 1, 1)) == [1, 1, 2]  # unpooled axes stay thin
    assert padded_size((5, 33, 16), (1, 16, 16)) == [5, 48, 32]
    assert pad_to_multiple(torch.zeros(1, 1, 5, 33, 16), (1, 16, 16)).shape == (1, 1, 5, 48, 32)
    check_patch_size((5, 48, 32), (1, 16, 16))  # what the padding makes is served
    with pytest.raises(ValueError, match="e.g. \\[5, 48, 32\\]"):
        check_patch_size((5, 33, 16), (1, 16, 16))


def test_the_output_layer_is_named_as_nnunets_so_pretrained_weights_skip_it():
    """nnU-Net's ``load_pretrained_weights`` (``nnUNetv2_train -pretrained_weights``) transfers
    every tensor but those under ``.seg_layers.``: SegResMamba's head, whose shape follows the
    classes. A tensor whose shape another plan changes is named."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    torch.manual_seed(0)
    source = small_net(out_channels=3)
    assert [k for k in source.state_dict() if ".seg_layers." in k] == ["head.seg_layers.weight",
                                                                          "head.seg_layers.bias"]
    target = small_net(out_channels=5)
    head = target.head.seg_layers.weight.detach().clone()
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"network_weights": source.state_dict()}, f"{folder}/checkpoint.pth")
        load_pretrained_weights(target, f"{folder}/checkpoint.pth")
        for name, tensor in target.state_dict().items():
            expected = head if name == "head.seg_layers.weight" else source.state_dict()[name]
            if name != "head.seg_layers.bias":
                assert torch.equal(tensor, expected), name
        other_strides = small_net(out_channels=3, stage_strides=[(2, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)])
        with pytest.raises(AssertionError, match="key downsamplings.0.3.weight is not the same"):
            load_pretrained_weights(other_strides, f"{folder}/checkpoint.pth")


def test_2d_bad_inputs_say_what_to_do():
    with pytest.raises(ValueError, match=r"spatial_dims=3 for that input"):
        small_net(spatial_dims=2)(torch.randn(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match=r"spatial_dims=2 \(SegResMamba.for_patch_size does\)"):
        check_patch_size((32, 32), (32, 32, 32))
    with pytest.raises(ValueError, match="pairs of 1 or 2"):
        SegResMamba(1, 2, stage_strides=[(2, 2, 2)] * 4, spatial_dims=2)
    with pytest.raises(ValueError, match="spatial_dims must be one of"):
        SegResMamba(1, 2, spatial_dims=1)
    with pytest.raises(ValueError, match=r"start with all 1"):
        strides_from_pools([(1, 1), (2, 2, 2)])
