"""Fine-tuning through nnU-Net's own loader, in-process: ``nnunetv2.run.run_training.load_pretrained_weights``,
the name that ``nnUNetv2_train -pretrained_weights`` calls, as importing our trainers leaves it
(trainers.fine_tuning). Every member of the family, on a checkpoint with another class count; a
load across plans refused with the tensors named and nnU-Net's commands; networks no trainer of
ours built keep nnU-Net's loader. Through the CLI: test_e2e.py (SegResMamba) and
test_e2e_family.py (U-Mamba, across plans)."""

import pytest
import torch
from nnunetv2.run import run_training

import nnunetv2_segresmamba.trainers  # noqa: F401 (installs our loader, as nnU-Net's trainer lookup does)
from nnunetv2_segresmamba.registry import FAMILY, network
from nnunetv2_segresmamba.trainers.fine_tuning import FineTuningTarget, mark

SMALL_WIDTHS = {  # builder arguments that make each network small; the rest build at their default widths
    "SegResMamba": {"feature_sizes": (8, 16, 32, 64)},
    "SegMamba": {"feature_sizes": (8, 16, 32, 64), "hidden_size": 64},
    "SwinUNETR": {"feature_size": 12},
    "UNETR": {"hidden_size": 48, "mlp_dim": 96, "num_heads": 3},
}
IN_CHANNELS, PRETRAINED_CLASSES, TARGET_CLASSES = 2, 3, 2


def small_network(member, out_channels: int, seed: int) -> torch.nn.Module:
    """``member``'s network for its smallest patch, 2D where it has one, at :data:`SMALL_WIDTHS`."""
    dims = 2 if 2 in member.spatial_dims else 3
    widths = SMALL_WIDTHS.get(member.network.split("-")[0], {})
    torch.manual_seed(seed)
    return member.build(IN_CHANNELS, out_channels, [member.patch_divisor or 16] * dims, **widths)


def save_checkpoint(net: torch.nn.Module, path, **extra) -> str:
    """``net``'s weights as nnU-Net's checkpoints hold them."""
    torch.save({"network_weights": net.state_dict(), **extra}, str(path))
    return str(path)


def members_by_network() -> list[list]:
    """FAMILY's members, those whose builder is the same (so the same network) together."""
    groups = {}
    for member in FAMILY:
        groups.setdefault(member.builder, []).append(member)
    return list(groups.values())


@pytest.mark.parametrize("members", members_by_network(),
                         ids=["+".join(m.network for m in group) for group in members_by_network()])
def test_every_member_fine_tunes_from_a_checkpoint_with_another_class_count(members, tmp_path):
    """The declared output layers are the tensors that depend on the classes (every
    deep-supervision head); nnU-Net's loader, as our trainers leave it, gives the network every
    other tensor of the checkpoint and leaves the output layers as initialised. Members that build
    the same network (the recipe ablations, the ResEnc presets, Swin-UMamba from scratch) share a
    case and must declare the same output layers."""
    member = members[0]
    assert {m.output_layers for m in members} == {member.output_layers}
    pretrained = small_network(member, PRETRAINED_CLASSES, seed=0)
    tuned = small_network(member, TARGET_CLASSES, seed=1)
    before = {k: v.clone() for k, v in tuned.state_dict().items()}
    source = pretrained.state_dict()
    by_classes = {k for k, v in before.items() if v.shape != source[k].shape}
    output = {k for k in before if k.startswith(member.output_layers)}
    assert output == by_classes, f"declared {member.output_layers}, class-dependent {sorted(by_classes)}"
    assert any(not torch.equal(v, source[k]) for k, v in before.items() if k not in output), "nothing to load"

    mark(tuned, FineTuningTarget(member.output_layers))
    run_training.load_pretrained_weights(tuned, save_checkpoint(pretrained, tmp_path / "checkpoint_final.pth"))
    for key, value in tuned.state_dict().items():
        expected = before[key] if key in output else source[key]
        assert torch.equal(value, expected), f"{key}: not the {'fresh' if key in output else 'pretrained'} tensor"


def test_a_checkpoint_of_other_plans_is_refused_naming_the_tensors_and_the_commands(tmp_path):
    """SegResMamba strided for a 1 mm patch into one strided for (2, 1, 1) mm (downsampling
    kernels = strides): a short list of tensors with both shapes, nothing loaded, and nnU-Net's commands
    that train the dataset with the checkpoint's plans, written out for the run."""
    member = network("SegResMamba")
    torch.manual_seed(0)
    pretrained = member.build(IN_CHANNELS, PRETRAINED_CLASSES, [16, 32, 32], **SMALL_WIDTHS["SegResMamba"])
    from nnunetv2_segresmamba.networks.segresmamba import SegResMamba

    torch.manual_seed(1)
    tuned = SegResMamba.for_patch_size(IN_CHANNELS, TARGET_CLASSES, [16, 32, 32], spacing=[2.0, 1.0, 1.0],
                                       tom_directions=member.tom_directions, **SMALL_WIDTHS["SegResMamba"])
    mismatched = [k for k, v in tuned.state_dict().items()
                  if not k.startswith(member.output_layers) and v.shape != pretrained.state_dict()[k].shape]
    assert mismatched, "the two plans build the same network"
    before = {k: v.clone() for k, v in tuned.state_dict().items()}
    mark(tuned, FineTuningTarget(member.output_layers, "nnUNetTrainerSegResMamba", "SegResMamba", "Dataset994_Other",
                                 "3d_fullres", "0"))
    path = save_checkpoint(pretrained, tmp_path / "checkpoint_final.pth")
    with pytest.raises(ValueError) as refused:
        run_training.load_pretrained_weights(tuned, path)
    message = str(refused.value)
    print(message)
    assert len(message.splitlines()) < 20, "not a short list"
    key = mismatched[0]
    assert f"{key}: {tuple(pretrained.state_dict()[key].shape)} vs. {tuple(before[key].shape)}" in message
    assert "nnUNetv2_move_plans_between_datasets -s SOURCE_DATASET -t 994 -sp SOURCE_PLANS" in message
    assert f"nnUNetv2_train 994 3d_fullres 0 -tr nnUNetTrainerSegResMamba -p SOURCE_PLANS_fromSOURCE " \
           f"-pretrained_weights {path}" in message
    assert all(torch.equal(v, before[k]) for k, v in tuned.state_dict().items()), "something was loaded"


def test_a_checkpoint_of_another_network_says_so(tmp_path):
    """A SegMamba checkpoint into a SwinUNETR of the family: the tensors, and which networks they are
    (the member each trainer names, which our checkpoints record in their ``architecture``)."""
    segmamba, swinunetr = network("SegMamba"), network("SwinUNETR")
    path = save_checkpoint(small_network(segmamba, PRETRAINED_CLASSES, seed=0), tmp_path / "checkpoint_final.pth",
                           trainer_name="nnUNetTrainerSegMamba_smoke", architecture={"member": "SegMamba"})
    tuned = small_network(swinunetr, TARGET_CLASSES, seed=1)
    mark(tuned, FineTuningTarget(swinunetr.output_layers, "nnUNetTrainerSwinUNETR", "SwinUNETR"))
    with pytest.raises(ValueError, match=r"(?s)missing from the checkpoint, \d+:.*The checkpoint holds SegMamba "
                                         r"\(nnUNetTrainerSegMamba_smoke\); nnUNetTrainerSwinUNETR builds SwinUNETR"):
        run_training.load_pretrained_weights(tuned, path)


def test_networks_no_trainer_of_ours_built_keep_nnunets_loader(tmp_path):
    """An unmarked network (a stock nnU-Net trainer's, or one built by hand) goes to nnU-Net's
    function unchanged: it leaves out only ``.seg_layers.``, so MONAI's ``out.conv.conv`` is refused
    by its assertion."""
    member = network("SegMamba")
    path = save_checkpoint(small_network(member, PRETRAINED_CLASSES, seed=0), tmp_path / "checkpoint_final.pth")
    with pytest.raises(AssertionError, match="key out.conv.conv.weight is not the same"):
        run_training.load_pretrained_weights(small_network(member, TARGET_CLASSES, seed=1), path)
