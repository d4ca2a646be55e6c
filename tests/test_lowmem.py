"""Activation checkpointing (the networks' ``checkpointing``, the ``_lowmem`` trainers): the plain
network's outputs and gradients, bit for bit where no ToM runs direction by direction and to fp32
rounding where one does, fewer bytes kept for the backward pass, the same state_dict, and
checkpoints that load either way."""

import pytest
import torch

from nnunetv2_segresmamba.networks import SegResMamba
from nnunetv2_segresmamba.operators.tom import MambaLayer
from nnunetv2_segresmamba.registry import network
from nnunetv2_segresmamba.trainers.base import require_same_architecture
from tests.reference import backends_to_test, device_of

SMALL = (8, 16, 32, 64)  # SegResMamba's stage widths here: a sixth of the paper's
SIBLINGS = {  # network: (patch, width overrides, a module inside a checkpointed segment)
    "SegMamba": ((32, 32, 32), {"feature_sizes": SMALL, "hidden_size": 64}, "vit.gscs.0"),
    "SwinUNETR": ((64, 64), {"feature_size": 12}, "swinViT.layers1.0.blocks.0.norm1"),
    "U-Mamba Bot": ((16, 16, 16), {}, "encoder.stages.0"),
    "U-Mamba Enc": ((32, 32), {}, "encoder.stages.0"),
}


def pair(build, **kwargs):
    """(plain, checkpointing) networks from ``build(checkpointing=...)``, with the same weights: the
    plain one's state_dict loads into the other with strict keys."""
    torch.manual_seed(0)
    plain, lowmem = build(**kwargs), build(**kwargs, checkpointing=True)
    lowmem.load_state_dict(plain.state_dict())
    return plain, lowmem


def segresmamba(patch, **kwargs):
    return SegResMamba.for_patch_size(2, 3, patch, feature_sizes=SMALL, **kwargs)


def sibling(name, **kwargs):
    patch, widths, _ = SIBLINGS[name]
    return network(name).build(2, 3, patch, **widths, **kwargs)


def step(net, x, bf16=False):
    """One training step's output, input gradient and parameter gradients, for a loss that weighs
    every logit differently (so that no gradient is trivially uniform)."""
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = net(x)
    out = out[0] if isinstance(out, list) else out  # U-Mamba's deep supervision: the full resolution
    (out.float() * torch.linspace(-1, 1, out.numel(), device=out.device).view(out.shape)).sum().backward()
    return out.detach(), x.grad, {name: p.grad for name, p in net.named_parameters()}


def assert_same_step(plain, lowmem):
    (out, x_grad, grads), (out_ck, x_grad_ck, grads_ck) = plain, lowmem
    assert torch.equal(out, out_ck) and torch.equal(x_grad, x_grad_ck)
    assert x_grad.abs().sum() > 0
    assert grads.keys() == grads_ck.keys()
    unused = [n for n, g in grads.items() if g is None]  # U-Mamba's deep-supervision outputs, when off
    assert unused == [n for n, g in grads_ck.items() if g is None] and len(unused) <= 4
    assert [n for n in grads if n not in unused and not torch.equal(grads[n], grads_ck[n])] == []


def calls_of(net, module_name):
    """A list that gets one entry each time the submodule ``module_name`` of ``net`` starts (a
    recomputation stops as soon as it has what the backward pass needs, maybe inside it)."""
    calls = []
    net.get_submodule(module_name).register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def assert_close_step(plain, lowmem, rel=1e-5):
    """Outputs, input gradients and parameter gradients equal to fp32 rounding: each within ``rel``
    of its own largest magnitude. A bias whose gradient is rounding noise around 0 (below 1e-6 of
    the largest, as a conv bias's before an InstanceNorm is) is compared on the largest's scale."""
    (out, x_grad, grads), (out_ck, x_grad_ck, grads_ck) = plain, lowmem
    torch.testing.assert_close(out_ck, out, rtol=0, atol=rel * out.abs().max().item())
    torch.testing.assert_close(x_grad_ck, x_grad, rtol=0, atol=rel * x_grad.abs().max().item())
    assert grads.keys() == grads_ck.keys() and x_grad.abs().max() > 0
    largest = max(g.abs().max().item() for g in grads.values())
    noise = {name for name, g in grads.items() if name.endswith("bias") and g.abs().max() < 1e-6 * largest}
    assert len(noise) < len(grads) / 4, sorted(noise)
    for name, grad in grads.items():
        scale = largest if name in noise else grad.abs().max().item()
        torch.testing.assert_close(grads_ck[name], grad, rtol=0, atol=rel * scale, msg=name)


@pytest.mark.parametrize("patch", [(32, 32, 32), (32, 32)], ids=["3d", "2d"])
def test_segresmamba_without_tom_gradients_equal_the_plain_networks(patch):
    """The convolutions' segments change nothing: without ToMs (the NoToM ablation) the same output,
    input gradient and gradient of every parameter, bit for bit, fp32 on the CPU; and the mixed
    blocks' convolutions really ran again in the backward pass."""
    plain, lowmem = pair(segresmamba, patch=patch, tom_directions=())
    calls, calls_ck = calls_of(plain, "mixed_blocks.0.local"), calls_of(lowmem, "mixed_blocks.0.local")
    x = torch.randn(2, 2, *patch)
    assert_same_step(step(plain, x), step(lowmem, x))
    assert (len(calls), len(calls_ck)) == (1, 2)


@pytest.mark.parametrize("patch", [(32, 32, 32), (32, 32)], ids=["3d", "2d"])
def test_segresmamba_gradients_equal_the_plain_networks_to_rounding(patch):
    """With the ToMs (fused numba path), fp32 on the CPU: output, input gradient and every
    parameter's gradient within 1e-5 of the largest of each, and the ToMs ran again direction by
    direction (each direction's conv a third time)."""
    plain, lowmem = pair(segresmamba, patch=patch, backend="numba")
    norm = "mixed_blocks.0.mamba.norm"
    calls, calls_ck = calls_of(plain, norm), calls_of(lowmem, norm)
    x = torch.randn(2, 2, *patch)
    assert_close_step(step(plain, x), step(lowmem, x))
    directions = len(lowmem.mixed_blocks[0].mamba.mamba.directions)
    assert len(calls) == 1 and len(calls_ck) == (directions + 1) + (2 * directions + 1)


TRITON_ON_A_GPU = pytest.param("triton", marks=[*backends_to_test("triton")[0].marks, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="Triton on a GPU (interpreted: minutes; its kernels are tested in test_fused_tom)")])


@pytest.mark.parametrize("backend", [*backends_to_test("numba", "pure"), TRITON_ON_A_GPU])
@pytest.mark.parametrize("directions", [("", "_b", "_s"), ("_s",)], ids=["tom", "inter-slice"])
def test_a_tom_direction_by_direction_equals_the_plain_tom(backend, directions):
    """A MambaLayer with ``checkpointing`` against the plain one, at an odd size (3 slices of 5x7):
    outputs and the gradients of the input and every parameter to fp32 rounding, in fp32 on the
    fused CPU path, the pure one and, on a GPU (``benchmarks.gpu_check``), Triton's kernels;
    nothing kept of the scans but x and the directions' sum."""
    plain, lowmem = (net.to(device_of(backend)) for net in pair(MambaLayer, dim=12, backend=backend,
                                                                 directions=directions))
    x = torch.randn(2, 12, 3, 5, 7, device=device_of(backend))
    assert_close_step(step(plain, x), step(lowmem, x))
    assert saved_bytes(lowmem, x) == x.nbytes + x.nbytes * 2  # x, and the sum at twice its width
    with torch.no_grad():
        assert torch.equal(plain(x), lowmem(x))


def test_segresmamba_under_bf16_autocast_equals_the_plain_network(monkeypatch):
    """bf16 autocast on the CPU: without ToMs bit for bit (the recomputation runs under the autocast
    of the first run); a ToM direction by direction to bf16 rounding. With oneDNN off: its bf16 weight gradients of 5^3
    convolutions on maps of 2^3 to 4^3 voxels (the deep mixed blocks here) differ from one call to
    the next, now and then by 1e36 or inf, for a lone nn.Conv3d without any checkpointing (torch
    2.14.1); PyTorch's own kernels are deterministic."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    x = torch.randn(2, 2, 32, 32, 32)
    plain, lowmem = pair(segresmamba, patch=(32, 32, 32), tom_directions=())
    assert_same_step(step(plain, x, bf16=True), step(lowmem, x, bf16=True))
    plain, lowmem = pair(MambaLayer, dim=12, backend="numba")
    x = torch.randn(2, 12, 3, 5, 7)
    assert_close_step(step(plain, x, bf16=True), step(lowmem, x, bf16=True), rel=2e-2)


@pytest.mark.parametrize("name", SIBLINGS)
def test_siblings_gradients_equal_the_plain_networks(name):
    """SegMamba (encoder stages, UNETR blocks, its ToM layers direction by direction: to fp32
    rounding), MONAI's SwinUNETR (``use_checkpoint``: each Swin block's halves) and U-Mamba (stem,
    encoder and decoder stages), bit for bit; fp32 on the CPU."""
    plain, lowmem = pair(sibling, name=name)
    inner = SIBLINGS[name][2]
    calls, calls_ck = calls_of(plain, inner), calls_of(lowmem, inner)
    x = torch.randn(1, 2, *SIBLINGS[name][0])
    compare = assert_close_step if name == "SegMamba" else assert_same_step
    compare(step(plain, x), step(lowmem, x))
    assert (len(calls), len(calls_ck)) == (1, 2)


def saved_bytes(net, x):
    """Bytes of the tensors that autograd keeps for the backward pass of ``net(x)``: each storage
    once, the parameters left out. Checkpointed segments keep only their inputs, which
    ``torch.utils.checkpoint`` saves through these hooks too; what they save inside is packed by
    its own hooks, and recomputed."""
    parameters = {p.untyped_storage().data_ptr() for p in net.parameters()}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net(x)
    return sum(kept.values())


def test_checkpointing_keeps_an_eighth_of_the_activations():
    """At 64^3, batch 2 (small widths): the plain network keeps 207 MB for the backward pass, the
    checkpointing one the inputs of its segments, 25 MB (an eighth), more than the input."""
    plain, lowmem = pair(segresmamba, patch=(64, 64, 64))
    x = torch.randn(2, 2, 64, 64, 64)
    kept, kept_ck = saved_bytes(plain, x), saved_bytes(lowmem, x)
    assert kept > 150e6 and 4 * x.nbytes < kept_ck < kept / 8
    with torch.no_grad():
        assert saved_bytes(lowmem, x) == saved_bytes(plain, x) == 0


def test_without_grad_nothing_is_recomputed_and_the_output_is_the_plain_one():
    plain, lowmem = pair(segresmamba, patch=(32, 32))
    calls = calls_of(lowmem, "mixed_blocks.0")
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), lowmem(x))
    with torch.inference_mode():
        assert torch.equal(plain.eval()(x), lowmem.eval()(x))
    assert len(calls) == 2  # once a forward pass


@pytest.mark.parametrize("name", [*SIBLINGS, "SegResMamba"])
def test_the_state_dict_is_the_same_with_and_without(name):
    build = segresmamba if name == "SegResMamba" else sibling
    kwargs = {"patch": (32, 32)} if name == "SegResMamba" else {"name": name}
    plain, lowmem = pair(build, **kwargs)  # strict load
    state, state_ck = plain.state_dict(), lowmem.state_dict()
    assert list(state) == list(state_ck) and all(torch.equal(state[k], state_ck[k]) for k in state)
    if hasattr(plain, "arch_kwargs"):  # SegResMamba's and U-Mamba's record it
        assert lowmem.arch_kwargs["checkpointing"] is True and plain.arch_kwargs["checkpointing"] is False


def test_checkpoints_load_whatever_checkpointing_they_record():
    """``checkpointing`` is in arch_kwargs (a checkpoint says how it trained) but not part of the
    architecture: a ``_lowmem`` checkpoint loads into the plain network and back, and so do
    checkpoints written before it was recorded. Any other difference is still refused."""
    built = SegResMamba.for_patch_size(1, 2, (32, 32), feature_sizes=SMALL)
    architecture = {"network_class_name": "SegResMamba", "arch_kwargs": built.arch_kwargs}
    lowmem = {**architecture, "arch_kwargs": {**built.arch_kwargs, "checkpointing": True}}
    older = {**architecture, "arch_kwargs": {k: v for k, v in built.arch_kwargs.items() if k != "checkpointing"}}
    for saved, now in ((lowmem, architecture), (architecture, lowmem), (older, architecture), (older, lowmem)):
        require_same_architecture(saved, now, "checkpoint.pth")
    other = {**lowmem, "arch_kwargs": {**lowmem["arch_kwargs"], "feature_sizes": [16, 32, 64, 128]}}
    with pytest.raises(ValueError, match=r"feature_sizes: checkpoint \[16, 32, 64, 128\], plans \[8, 16, 32, 64\]\)"):
        require_same_architecture(other, architecture, "checkpoint.pth")


LOWMEM_TRAINERS = {"nnUNetTrainerSegResMamba": "SegResMamba", "nnUNetTrainerSegMamba": "SegMamba",
                   "nnUNetTrainerSwinUNETR": "SwinUNETR", "nnUNetTrainerUMambaBot": "U-Mamba Bot",
                   "nnUNetTrainerUMambaEnc": "U-Mamba Enc"}


def test_lowmem_trainers_are_their_members_with_checkpointing():
    """Every ``_lowmem`` trainer (and its ``_lowmem_smoke``) is the plain trainer with one class
    attribute changed, and reports name its member's network."""
    from nnunetv2_segresmamba import trainers

    lowmem = sorted(name for name in trainers.__all__ if name.endswith(("_lowmem", "_lowmem_smoke")))
    assert lowmem == sorted(f"{t}_lowmem{s}" for t in LOWMEM_TRAINERS for s in ("", "_smoke"))
    for trainer, network_name in LOWMEM_TRAINERS.items():
        plain, variant, smoke = (getattr(trainers, f"{trainer}{s}") for s in ("", "_lowmem", "_lowmem_smoke"))
        assert not plain.activation_checkpointing and variant.activation_checkpointing
        assert issubclass(variant, plain) and issubclass(smoke, variant) and smoke.activation_checkpointing
        assert smoke.comparison_num_epochs * smoke.comparison_iterations_per_epoch == 2  # the cheapest run
        changed = {k for c in variant.__mro__[:-1] if c not in plain.__mro__ for k in vars(c)} - {
            "__module__", "__doc__", "__qualname__", "__firstlineno__", "__static_attributes__", "__dict__",
            "__weakref__", "__init_subclass__"}  # LowMemory's check of the trainers defined after it
        assert changed == {"activation_checkpointing"}, trainer
        for name in (f"{trainer}_lowmem", f"{trainer}_lowmem_smoke"):
            assert getattr(trainers, name).family_member().network == network_name == plain.family_member().network
