"""The family's networks under DistributedDataParallel, on the CPU: one real 2-process
``torch.distributed`` group (gloo, torch.multiprocessing spawn) runs every case in turn.

nnU-Net's own DDP path (``nnUNetv2_train -num_gpus 2``) needs CUDA: NCCL, and
``DDP(network, device_ids=[local_rank])`` after ``SyncBatchNorm.convert_sync_batchnorm``. Here each
rank wraps the network as nnU-Net's ``initialize`` does, SyncBatchNorm conversion included, but
with the CPU's form of the same wrapper, ``device_ids=None``, over gloo; nnU-Net's data side (each
rank loads its own half of the global batch, ``_set_batch_size_and_oversample``) is the two half
batches given to the ranks below.
"""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunetv2_segresmamba.networks import SegResMamba
from nnunetv2_segresmamba.networks.swin_umamba import SwinUMamba
from nnunetv2_segresmamba.networks.umamba import UMambaBot, UMambaEnc
from nnunetv2_segresmamba.optimizers.galore import GaLoreAdamW
from nnunetv2_segresmamba.registry import network, umamba_plan
from nnunetv2_segresmamba.trainers.parameter_groups import galore_groups, parameter_groups

WORLD, BATCH = 2, 2  # the global batch; each rank gets BATCH // WORLD samples
SMALL = (8, 16, 32, 64)


def segresmamba(checkpointing=False):
    return SegResMamba.for_patch_size(1, 2, (16, 16, 16), feature_sizes=SMALL, checkpointing=checkpointing)


def segmamba(checkpointing=False):
    return network("SegMamba").build(1, 2, (16, 16, 16), feature_sizes=SMALL, hidden_size=64,
                                     checkpointing=checkpointing)


def swinunetr(checkpointing=False):  # 64: its bottleneck keeps 2 x 2 voxels for its InstanceNorm
    return network("SwinUNETR").build(1, 2, (64, 64), feature_size=12, checkpointing=checkpointing)


def umamba_bot(checkpointing=False):  # with deep supervision, as its trainer trains it
    return UMambaBot(1, 2, **umamba_plan((16, 16, 16)), deep_supervision=True, checkpointing=checkpointing)


def umamba_enc(checkpointing=False):
    return UMambaEnc(1, 2, (32, 32), **umamba_plan((32, 32)), deep_supervision=True, checkpointing=checkpointing)


def swin_umamba(checkpointing=False):  # with deep supervision, as its trainer trains it
    assert not checkpointing, "Swin-UMamba has no _lowmem variant"
    return SwinUMamba(1, 2, deep_supervision=True)


CASES = {  # name: (builder, input shape of one sample, with a _lowmem twin)
    "SegResMamba": (segresmamba, (1, 16, 16, 16), True),
    "SegMamba": (segmamba, (1, 16, 16, 16), True),
    "SwinUNETR": (swinunetr, (1, 64, 64), True),
    "U-Mamba Bot": (umamba_bot, (1, 16, 16, 16), True),
    "U-Mamba Enc": (umamba_enc, (1, 32, 32), True),
    "Swin-UMamba": (swin_umamba, (1, 32, 32), False),
}


def loss_of(outputs) -> torch.Tensor:
    """A mean over the batch (as nnU-Net's losses) that weighs every logit differently; every
    deep-supervision output counts, as in nnU-Net's deep-supervision loss."""
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    total = 0
    for out in outputs:
        weights = torch.linspace(-1, 1, out[0].numel()).view(out.shape[1:])
        total = total + (out * weights).sum(dim=tuple(range(1, out.dim()))).mean()
    return total


def ddp(net):
    """As nnU-Net's ``initialize`` wraps it, in the CPU's form (``device_ids=None``)."""
    net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in net.modules()), \
        "a BatchNorm: SyncBatchNorm runs on CUDA only, this CPU test cannot check it"
    return DDP(net)


def batch(shape, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((BATCH, *shape), generator=generator)


def assert_fp32_close(got: dict, expected: dict, what: str, rel=1e-4):
    """Each tensor within ``rel`` of the largest magnitude among them all (a gradient that is
    rounding noise around 0, e.g. a conv bias before an InstanceNorm, is judged on that scale)."""
    assert got.keys() == expected.keys()
    largest = max(t.abs().max().item() for t in expected.values())
    assert largest > 0
    bad = [name for name in expected
           if not torch.allclose(got[name], expected[name], rtol=rel, atol=rel * largest)]
    assert bad == [], f"{what}: {bad[:5]}"


def gradients(net) -> dict:
    return {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


def check_gradients(name: str, rank: int) -> None:
    """A DDP step on half batches gives one process's gradients of the whole batch, plain and
    (where the member has one) ``_lowmem``; a second step needs no find_unused_parameters (DDP
    raises there if a parameter got no gradient in the first).

    The reference is one process's mean of the two halves' gradients: the whole batch's in
    exact arithmetic (a mean-reduced loss over equal halves). In fp32 a network's gradients of
    the whole batch at once differ from those of its halves by its own rounding, which deep
    networks amplify (U-Mamba Bot's stem: up to 1e-3 of the largest gradient), so the whole
    batch at once would need a tolerance that hides DDP's own errors."""
    build, shape, lowmem = CASES[name]
    torch.manual_seed(0)
    reference = build()
    x = batch(shape)
    halves = []
    for part in range(WORLD):
        reference.zero_grad()
        torch.manual_seed(100 + part)  # the same drop-path draws (Swin-UMamba's VMamba) as rank ``part``
        loss_of(reference(x[part * BATCH // WORLD:(part + 1) * BATCH // WORLD])).backward()
        halves.append(gradients(reference))
    expected = {key: sum(h[key] for h in halves) / WORLD for key in halves[0]}
    for checkpointing in (False, True) if lowmem else (False,):
        net = build(checkpointing=checkpointing)
        net.load_state_dict(reference.state_dict())
        wrapped = ddp(net)
        half = x[rank * BATCH // WORLD:(rank + 1) * BATCH // WORLD]
        for _ in range(1 if checkpointing else 2):
            wrapped.zero_grad()
            torch.manual_seed(100 + rank)
            loss_of(wrapped(half)).backward()  # DDP averages the ranks' gradients
            unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
            assert unused == [], f"{name}: parameters without a gradient under DDP: {unused[:5]}"
            assert_fp32_close(gradients(net), expected, f"{name}{' _lowmem' if checkpointing else ''}", rel=1e-5)
        print(f"rank {rank}: {name}{' _lowmem' if checkpointing else ''} ok", flush=True)


def same_on_both_ranks(tensors: dict, what: str) -> None:
    for key, tensor in tensors.items():
        theirs = tensor.clone()
        dist.broadcast(theirs, src=0)
        assert torch.equal(theirs, tensor), f"{what} {key} differs between the ranks"


def check_galore(rank: int) -> None:
    """GaLore-AdamW on the DDP network, its projector refreshed at steps 0 and 2 (gap 2): the
    projectors, moments and weights identical on both ranks after 3 steps."""
    torch.manual_seed(0)
    wrapped = ddp(segresmamba())
    groups = galore_groups(wrapped.module, parameter_groups(wrapped.module, 1e-5), rank=4, update_proj_gap=2,
                           scale=0.25)
    assert any("rank" in g for g in groups)
    optimizer = GaLoreAdamW(groups, lr=1e-3, weight_decay=1e-5)
    for step in range(3):
        x = batch((1, 16, 16, 16), seed=10 + step)
        optimizer.zero_grad()
        loss_of(wrapped(x[rank:rank + 1])).backward()
        optimizer.step()
    names = {id(p): n for n, p in wrapped.module.named_parameters()}
    state = {f"{names[id(p)]}.{k}": v for p, s in optimizer.state.items() for k, v in s.items()
             if isinstance(v, torch.Tensor)}
    assert any(k.endswith(".projector") for k in state), "no projector was made"
    same_on_both_ranks(state, "GaLore state")
    same_on_both_ranks(dict(wrapped.module.named_parameters()), "weight")


def check_frozen_encoder_fails_under_ddp(rank: int) -> None:
    """What nnUNetTrainerSwinUMamba refuses (test_trainers): its encoder frozen in an epoch after
    DDP was built waits for gradients that never come; DDP raises at the next step."""
    torch.manual_seed(0)
    net = swin_umamba()
    wrapped = ddp(net)
    net.vssm_encoder.freeze(True)
    with pytest.raises(RuntimeError, match="finished reduction|did not receive grad|unused"):
        for seed in (1, 2):
            loss_of(wrapped(batch((1, 32, 32), seed)[rank:rank + 1])).backward()


def run_rank(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        for name in CASES:
            check_gradients(name, rank)
        check_galore(rank)
        check_frozen_encoder_fails_under_ddp(rank)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_family_under_ddp_on_two_cpu_processes():
    """Every case in one spawned group: an assertion in a rank fails the test with its traceback."""
    mp.spawn(run_rank, args=(free_port(),), nprocs=WORLD, join=True)
