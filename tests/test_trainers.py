"""Trainers built as nnU-Net builds them (``__init__`` then ``initialize``) from the plans that
nnU-Net's planner writes for a (3, 0.8, 0.8) mm dataset: optimizer groups and recipes."""

import json
import os
import re

import pytest
import torch

from nnunetv2_segresmamba import trainers
from nnunetv2_segresmamba.tools.synthetic import dataset_json
from tests.workspaces import ANISOTROPIC, RESENC_M


def preprocessed_folder(ws) -> str:
    return os.path.join(ws.path("nnUNet_preprocessed"), ANISOTROPIC.folder_name)


@pytest.fixture(scope="module")
def planned(anisotropic_workspace):
    """(workspace, plans) after nnU-Net's fingerprint and experiment planning (no preprocessing)."""
    ws = anisotropic_workspace
    folder = preprocessed_folder(ws)
    for configuration in ("3d_fullres", "2d"):  # initialize() infers the data format from the preprocessed files
        os.makedirs(os.path.join(folder, f"nnUNetPlans_{configuration}"), exist_ok=True)
        open(os.path.join(folder, f"nnUNetPlans_{configuration}", "case.b2nd"), "w").close()
    with open(os.path.join(folder, "nnUNetPlans.json")) as f:
        return ws, json.load(f)


@pytest.fixture(scope="module")
def resenc_plans(planned):
    """nnU-Net's ResEnc M plans of the same dataset (they share the default plans' preprocessed data)."""
    ws, _ = planned
    with open(os.path.join(preprocessed_folder(ws), f"{RESENC_M}.json")) as f:
        return json.load(f)


def initialized(trainer_name, planned, monkeypatch, plans=None, configuration="3d_fullres"):
    """The trainer ``trainer_name`` as ``nnUNetv2_train`` makes it, with its network and optimizer."""
    ws, planned_plans = planned
    for name, path in ws.env.items():
        monkeypatch.setenv(name, path)
    plans = {**json.loads(json.dumps(plans or planned_plans)), "continue_training": False}
    trainer = getattr(trainers, trainer_name)(plans, configuration, 0, dataset_json(ANISOTROPIC),
                                              device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def test_mamba_parameters_marked_no_weight_decay_get_none(planned, monkeypatch):
    trainer = initialized("nnUNetTrainerSegResMamba", planned, monkeypatch)
    decayed, undecayed = trainer.optimizer.param_groups
    assert decayed["weight_decay"] == trainer.recipe_weight_decay > 0 and undecayed["weight_decay"] == 0
    names = {id(p): n for n, p in trainer.network.named_parameters()}
    undecayed_names = {names[id(p)].rsplit(".", 1)[-1] for p in undecayed["params"]}
    assert undecayed_names == {"A_log", "D", "A_b_log", "D_b", "A_s_log", "D_s"}
    assert len(decayed["params"]) + len(undecayed["params"]) == len(names)
    assert any(names[id(p)].endswith("norm.weight") for p in decayed["params"])  # norms keep the recipe's decay


def test_a_network_without_marks_gets_one_group(planned, monkeypatch):
    trainer = initialized("nnUNetTrainerComparisonNnUNet", planned, monkeypatch)
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [3e-5]
    assert "optimizer: SGD (fused)" in open(trainer.log_file).read()  # the training log says which update runs


def test_optimizers_are_fused_where_torch_has_the_kernels():
    from nnunetv2_segresmamba.trainers.parameter_groups import fused_if_available

    layer = torch.nn.Linear(3, 2)
    fused = fused_if_available(torch.optim.AdamW, [{"params": layer.parameters()}], lr=1e-3)
    assert fused.defaults["fused"] and fused.defaults["lr"] == 1e-3
    reference = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    reference.param_groups[0]["params"][0].data.copy_(layer.weight.data)
    reference.param_groups[0]["params"][1].data.copy_(layer.bias.data)
    for optimizer in (fused, reference):  # the same update
        for p in optimizer.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        optimizer.step()
    torch.testing.assert_close(layer.weight, reference.param_groups[0]["params"][0])

    class DeviceWithoutFusedKernels(torch.optim.SGD):  # torch's refusal, as on such a device
        def __init__(self, params, fused=None, **kwargs):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                                   "supported devices: ['cpu', 'cuda']")
            super().__init__(params, **kwargs)

    unfused = fused_if_available(DeviceWithoutFusedKernels, [{"params": layer.parameters()}], lr=1e-2)
    assert not unfused.defaults["fused"] and unfused.defaults["lr"] == 1e-2


ANISOTROPIC_STRIDES = {  # SegResMamba's strides for nnU-Net's pools (1,1,1), (1,2,2), (2,2,2), (2,2,2), (1,2,2)
    "stage_strides": [[1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
    "block_strides": [[2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 1, 1]],
}


def test_the_network_built_from_stock_plans_is_the_one_trained(planned, monkeypatch):
    """nnU-Net's plans of a 3 x 0.8 x 0.8 mm dataset, as a notebook or nnUNetv2_predict reads
    them, build the network that training builds, strided in-plane first; the run's plans keep
    nnU-Net's architecture, so they still answer ``pool_op_kernel_sizes``."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    _, plans = planned
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["strides"] == [
        [1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    trainer = initialized("nnUNetTrainerSegResMamba", planned, monkeypatch)
    manager = PlansManager(plans)
    stock = trainers.nnUNetTrainerSegResMamba.build_network_architecture(
        manager, manager.get_configuration("3d_fullres"), 1, 2, False)
    assert trainer.network.arch_kwargs == stock.arch_kwargs == {
        "feature_sizes": [48, 96, 192, 384], **ANISOTROPIC_STRIDES, "tom_directions": ["", "_b", "_s"],
        "patch_size": [20, 96, 80], "spatial_dims": 3, "checkpointing": False}
    assert stock.state_dict().keys() == trainer.network.state_dict().keys()
    assert all(stock.state_dict()[k].shape == v.shape for k, v in trainer.network.state_dict().items())
    assert trainer.network.size_divisor == (4, 16, 16)
    assert trainer.configuration_manager.pool_op_kernel_sizes == plans["configurations"]["3d_fullres"][
        "architecture"]["arch_kwargs"]["strides"]
    assert trainer.plans_manager.plans["configurations"]["3d_fullres"]["architecture"] == \
        plans["configurations"]["3d_fullres"]["architecture"]  # what nnU-Net writes as the run's plans.json


def test_trainers_mark_their_network_for_pretrained_weights(planned, monkeypatch):
    """``initialize`` marks the network with its member's output layers and the run, which
    ``-pretrained_weights`` reads (trainers.fine_tuning); a subclass of a family trainer has its
    parent's member."""
    from nnunetv2_segresmamba.trainers.fine_tuning import target_of

    trainer = initialized("nnUNetTrainerUNETR_smoke", planned, monkeypatch)
    target = target_of(trainer.network)
    assert (target.output_layers, target.trainer, target.dataset, target.configuration, target.fold,
            target.num_input_channels) == (("out.",), "nnUNetTrainerUNETR_smoke", ANISOTROPIC.folder_name,
                                           "3d_fullres", "0", 1)
    assert target.plan["patch_size"] == list(trainer.configuration_manager.patch_size) == [32, 96, 80]

    class MyTrainer(trainers.nnUNetTrainerSwinUMambaScratch_smoke):
        pass

    assert MyTrainer.family_member().output_layers == ("out_layers.",)


def test_checkpoints_carry_the_architecture_and_refuse_another(planned, monkeypatch, tmp_path):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainer = initialized("nnUNetTrainerSegResMamba_smoke", planned, monkeypatch)
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # the architecture adds only plain types
    assert checkpoint["architecture"]["network_class_name"] == "nnunetv2_segresmamba.networks.segresmamba.SegResMamba"
    assert list(checkpoint["architecture"]["arch_kwargs"]["feature_sizes"]) == [16, 32, 64, 128]  # the smoke's
    stock = str(tmp_path / "stock.pth")
    nnUNetTrainer.save_checkpoint(trainer, stock)  # nnU-Net's own, whose keys ours must keep
    assert set(checkpoint) == set(torch.load(stock, weights_only=False)) | {"architecture"}
    assert all(isinstance(v, torch.Tensor) for v in checkpoint["network_weights"].values())
    assert not os.path.exists(path + ".partial")
    trainer.load_checkpoint(path)
    checkpoint["architecture"]["arch_kwargs"]["block_strides"] = [[2, 2, 2]] * 4
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"block_strides: checkpoint \[\[2, 2, 2\].*plans \[\[2, 2, 2\], \[2, 2, 2\], "
                                         r"\[1, 2, 2\], \[1, 1, 1\]\].*Nothing was loaded"):
        trainer.load_checkpoint(path)


PRE_RENAME_ADVICE = (r"trained with an earlier nnunetv2_segresmamba \(before commit 44e77dd.*output layer was called "
                     r"'head' \(now 'head\.seg_layers'\).*no 'strides'.*nothing was loaded or changed\. Train it again")


def pre_rename(checkpoint: dict) -> dict:
    """``checkpoint`` as SegResMamba's trainers wrote it before the output layer was renamed: the
    layer's keys head.weight/head.bias, the architecture in the weights (_extra_state), none beside."""
    old = {k: v for k, v in checkpoint.items() if k != "architecture"}
    weights = {k.replace("head.seg_layers.", "head."): v for k, v in checkpoint["network_weights"].items()}
    old["network_weights"] = {**weights, "_extra_state": {"arch_kwargs": checkpoint["architecture"]["arch_kwargs"]}}
    return old


def test_a_checkpoint_from_before_the_output_layer_rename_is_named_with_what_to_do(planned, monkeypatch, tmp_path):
    """--c and --val (load_checkpoint) on a pre-rename run's checkpoint: not nnU-Net's missing and
    unexpected keys, but what it is and what to do; the file is left as it was."""
    trainer = initialized("nnUNetTrainerSegResMamba_pipeline", planned, monkeypatch)
    path = str(tmp_path / "checkpoint_final.pth")
    trainer.save_checkpoint(path)
    torch.save(pre_rename(torch.load(path, weights_only=True)), path)
    written = open(path, "rb").read()
    with pytest.raises(RuntimeError, match=PRE_RENAME_ADVICE) as error:
        trainer.load_checkpoint(path)
    assert str(error.value).startswith(path)
    assert open(path, "rb").read() == written


def test_plans_from_before_the_output_layer_rename_are_named_with_what_to_do(planned):
    """nnUNetv2_predict on a pre-rename run: its plans.json holds SegResMamba's architecture where
    nnU-Net 2.8 reads the U-Net's, which nnU-Net reported as KeyError: 'strides'."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    _, plans = planned
    plans = json.loads(json.dumps(plans))
    plans["configurations"]["3d_fullres"]["architecture"] = {  # as the trainers wrote it into the run's plans
        "network_class_name": "nnunetv2_segresmamba.networks.segresmamba.SegResMamba", "_kw_requires_import": [],
        "arch_kwargs": {"feature_sizes": [48, 96, 192, 384], "stage_strides": [[1, 2, 2]] * 4,
                        "block_strides": [[1, 2, 2]] * 4, "tom_directions": ["", "_b", "_s"],
                        "patch_size": [16, 32, 40], "spatial_dims": 3}}
    manager = PlansManager(plans)
    with pytest.raises(RuntimeError, match=PRE_RENAME_ADVICE):
        trainers.nnUNetTrainerSegResMamba.build_network_architecture(manager, manager.get_configuration("3d_fullres"),
                                                                      1, 2, False)


def checkpointing_flags(network) -> list[bool]:
    """Every activation-checkpointing switch in ``network``: ours (``checkpointing``) and MONAI's
    (``use_checkpoint``)."""
    return [getattr(m, flag) for m in network.modules() for flag in ("checkpointing", "use_checkpoint")
            if hasattr(m, flag)]


@pytest.mark.parametrize("trainer", ["nnUNetTrainerSegResMamba", "nnUNetTrainerSegMamba", "nnUNetTrainerSwinUNETR",
                                     "nnUNetTrainerUMambaBot", "nnUNetTrainerUMambaEnc"])
def test_lowmem_trainers_build_their_network_with_checkpointing(planned, monkeypatch, trainer):
    """A ``_lowmem`` trainer builds its plain sibling's network, with the same parameter names,
    its checkpointing on (SwinUNETR: MONAI's use_checkpoint in every Swin layer and block)."""
    plain = initialized(f"{trainer}_smoke", planned, monkeypatch)
    lowmem = initialized(f"{trainer}_lowmem_smoke", planned, monkeypatch)
    assert type(plain.network) is type(lowmem.network)
    assert plain.network.state_dict().keys() == lowmem.network.state_dict().keys()
    flags, plain_flags = checkpointing_flags(lowmem.network), checkpointing_flags(plain.network)
    assert flags and all(flags) and len(plain_flags) == len(flags) and not any(plain_flags)
    if hasattr(lowmem.network, "arch_kwargs"):
        assert lowmem.architecture()["arch_kwargs"]["checkpointing"] is True
        assert plain.architecture()["arch_kwargs"]["checkpointing"] is False


@pytest.mark.parametrize("trainer", ["nnUNetTrainerComparisonNnUNet", "nnUNetTrainerSwinUMamba", "nnUNetTrainerUNETR"])
def test_lowmem_is_refused_where_the_network_would_not_checkpoint(trainer):
    """nnU-Net's, Swin-UMamba's and UNETR's networks are built without any checkpointing switch: a
    LowMemory variant would train exactly as the plain trainer. It is refused where it is defined,
    naming the trainers that take it."""
    from nnunetv2_segresmamba.trainers.memory import LowMemory

    supported = ("nnUNetTrainerSegResMamba, nnUNetTrainerSegMamba, nnUNetTrainerSwinUNETR, nnUNetTrainerUMambaBot, "
                 "nnUNetTrainerUMambaEnc")
    with pytest.raises(TypeError, match=rf"would train exactly as without LowMemory\. LowMemory works with these "
                                        rf"trainers and their variants: {supported}"):
        type(f"{trainer}_lowmem", (LowMemory, getattr(trainers, trainer)), {})


def test_each_members_trainer_checkpoints_as_its_registry_builder_says():
    """Whether a trainer's build_network takes ``checkpointing`` (what LowMemory checks) agrees with
    the registry builder of its member, for every member of the family: one fact, two builders."""
    from nnunetv2_segresmamba.registry import FAMILY, takes_checkpointing

    for m in FAMILY:
        assert takes_checkpointing(getattr(trainers, m.trainer).build_network) == takes_checkpointing(m.builder), m


def test_a_lowmem_run_and_a_plain_one_load_each_others_checkpoints(planned, monkeypatch, tmp_path):
    """The checkpoint records checkpointing (arch_kwargs) but loads into either trainer: the same
    weights, whichever way they were trained."""
    lowmem = initialized("nnUNetTrainerSegResMamba_lowmem_smoke", planned, monkeypatch)
    plain = initialized("nnUNetTrainerSegResMamba_pipeline", planned, monkeypatch)  # the same small widths
    for source, target in ((lowmem, plain), (plain, lowmem)):
        path = str(tmp_path / f"{type(source).__name__}.pth")
        source.save_checkpoint(path)
        assert torch.load(path, weights_only=True)["architecture"]["arch_kwargs"]["checkpointing"] == \
            source.network.checkpointing
        target.load_checkpoint(path)
        weights, loaded = source.network.state_dict(), target.network.state_dict()
        assert all(torch.equal(weights[k], loaded[k]) for k in weights)


@pytest.mark.parametrize("trainer_name,directions", [
    ("nnUNetTrainerSegResMambaNoToM", []), ("nnUNetTrainerSegResMambaForwardToM", [""]),
    ("nnUNetTrainerSegResMambaForwardReverseToM", ["", "_b"]),
])
def test_tom_ablations_change_only_the_tom(planned, monkeypatch, trainer_name, directions):
    from nnunetv2_segresmamba.operators.tom import MambaLayer, TriOrientedMamba

    trainer = initialized(trainer_name, planned, monkeypatch)
    toms = [m for m in trainer.network.modules() if isinstance(m, TriOrientedMamba)]
    assert trainer.network.arch_kwargs["tom_directions"] == directions
    assert all(list(t.directions) == directions for t in toms) and len(toms) == (8 if directions else 0)
    if not directions:
        assert not any(isinstance(m, MambaLayer) for m in trainer.network.modules())
    assert (trainer.optimizer_name, trainer.initial_lr, trainer.loss_name) == ("AdamW", 1e-4, "dice")


def test_recipe_swaps_make_the_two_by_two(planned, monkeypatch):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnunetv2_segresmamba.networks import SegResMamba

    segresmamba = initialized("nnUNetTrainerSegResMamba_nnUNetRecipe", planned, monkeypatch)
    assert isinstance(segresmamba.network, SegResMamba)
    assert isinstance(segresmamba.optimizer, torch.optim.SGD) and segresmamba.optimizer.defaults["nesterov"]
    assert segresmamba.initial_lr == 1e-2 and type(segresmamba.lr_scheduler).__name__ == "PolyLRScheduler"
    assert type(segresmamba.loss).__name__ == "DC_and_CE_loss"
    nnunet = initialized("nnUNetTrainerComparisonNnUNet_paperRecipe", planned, monkeypatch)
    assert isinstance(nnunet.network, PlainConvUNet) and not nnunet.enable_deep_supervision
    assert isinstance(nnunet.optimizer, torch.optim.AdamW) and nnunet.initial_lr == 1e-4
    assert type(nnunet.lr_scheduler).__name__ == "CosineAnnealingScheduler"
    assert type(nnunet.loss).__name__ == "MemoryEfficientSoftDiceLoss"


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerSegResMamba", "nnUNetTrainerComparisonNnUNet"])
def test_inputs_with_other_channel_counts_are_refused_before_the_network(planned, monkeypatch, trainer_name):
    trainer = initialized(trainer_name, planned, monkeypatch)  # ANISOTROPIC has 1 channel
    with pytest.raises(ValueError, match=r"trained on 1 input channel\(s\).* but got 2.*CASE_0000 to CASE_0000"):
        trainer.network(torch.zeros(1, 2, 4, 8, 8))


def test_2d_configuration_trains_the_2d_segresmamba_strided_by_the_2d_plan(planned, monkeypatch):
    _, plans = planned
    planned_2d = plans["configurations"]["2d"]
    assert planned_2d["architecture"]["arch_kwargs"]["strides"] == [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]]
    trainer = initialized("nnUNetTrainerSegResMamba", planned, monkeypatch, configuration="2d")
    kwargs = trainer.network.arch_kwargs
    assert kwargs["spatial_dims"] == 2 and kwargs["patch_size"] == planned_2d["patch_size"] == [96, 80]
    assert kwargs["stage_strides"] == [[2, 2]] * 4 and kwargs["block_strides"] == [[2, 2]] * 3 + [[1, 1]]
    out = trainer.network(torch.randn(2, 1, *planned_2d["patch_size"]))
    assert out.shape == (2, 2, *planned_2d["patch_size"])


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerSwinUNETR", "nnUNetTrainerUNETR",
                                          "nnUNetTrainerComparisonNnUNet"])
def test_siblings_whose_networks_exist_in_2d_train_2d(planned, monkeypatch, trainer_name):
    trainer = initialized(trainer_name, planned, monkeypatch, configuration="2d")
    patch = trainer.configuration_manager.patch_size
    assert len(patch) == 2
    out = trainer.network(torch.randn(1, 1, *patch))
    out = out[0] if isinstance(out, (list, tuple)) else out  # nnU-Net's deep supervision: full resolution first
    assert out.shape == (1, 2, *patch)


def test_segmamba_refuses_2d_and_names_what_to_use(planned, monkeypatch):
    with pytest.raises(ValueError, match=r"nnUNetTrainerSegMamba trains 3D networks only.*'2d'.*3d_fullres"):
        initialized("nnUNetTrainerSegMamba", planned, monkeypatch, configuration="2d")


def umamba_stages(network) -> tuple[list[int], list[int]]:
    """Blocks per encoder stage and per decoder stage."""
    return [len(s) for s in network.encoder.stages], [len(s) for s in network.decoder.stages]


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_umamba_trainers_build_the_official_networks_from_the_plans(planned, monkeypatch, configuration):
    """The plan's 5 stages of 2 convs become, as U-Mamba's constructors rewrite them, encoder
    blocks 2, 2, 2, 1, 1 and decoder blocks 2, 2, 2, 1; nnU-Net's recipe and deep supervision, and
    weight decay on every parameter (nnU-Net's SGD over all of them)."""
    from nnunetv2_segresmamba.networks.umamba import UMambaBot, UMambaEnc, UMambaLayer

    _, plans = planned
    patch = plans["configurations"][configuration]["patch_size"]
    bot = initialized("nnUNetTrainerUMambaBot", planned, monkeypatch, configuration=configuration)
    enc = initialized("nnUNetTrainerUMambaEnc", planned, monkeypatch, configuration=configuration)
    assert isinstance(bot.network, UMambaBot) and isinstance(enc.network, UMambaEnc)
    for trainer in (bot, enc):
        assert umamba_stages(trainer.network) == ([2, 2, 2, 1, 1], [2, 2, 2, 1])
        assert trainer.enable_deep_supervision and isinstance(trainer.optimizer, torch.optim.SGD)
        assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [3e-5]  # A_log and D included
        outputs = trainer.network(torch.randn(1, 1, *patch))
        assert len(outputs) == 4 and outputs[0].shape == (1, 2, *patch)
    assert enc.network.arch_kwargs["input_size"] == patch
    layers = [type(m).__name__ for m in enc.network.encoder.mamba_layers]
    assert layers == (["UMambaLayer"] * 5 if configuration == "3d_fullres" else
                      ["UMambaLayer", "Identity", "UMambaLayer", "Identity", "UMambaLayer"])
    assert isinstance(bot.network.mamba_layer, UMambaLayer)


def test_the_no_mamba_control_is_umamba_bot_without_its_layer(planned, monkeypatch):
    control = initialized("nnUNetTrainerUMambaBotNoMamba", planned, monkeypatch)
    bot = initialized("nnUNetTrainerUMambaBot", planned, monkeypatch)
    assert isinstance(control.network.mamba_layer, torch.nn.Identity)
    assert set(bot.network.state_dict()) - set(control.network.state_dict()) == {
        k for k in bot.network.state_dict() if k.startswith("mamba_layer.")}


def test_resenc_plans_train_the_resenc_unet_and_every_family_network(planned, resenc_plans, monkeypatch):
    """ResEnc M plans: nnU-Net's sibling trains nnU-Net's ResidualEncoderUNet (1, 3, 4, 6, 6 blocks),
    U-Mamba takes the plan's block counts through its constructor's rule, SegResMamba and SwinUNETR
    build as on the default plans."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    arch = resenc_plans["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"].endswith("ResidualEncoderUNet")
    assert arch["arch_kwargs"]["n_blocks_per_stage"] == [1, 3, 4, 6, 6]
    nnunet = initialized("nnUNetTrainerComparisonNnUNet", planned, monkeypatch, plans=resenc_plans)
    assert isinstance(nnunet.network, ResidualEncoderUNet) and nnunet.enable_deep_supervision
    bot = initialized("nnUNetTrainerUMambaBot", planned, monkeypatch, plans=resenc_plans)
    assert umamba_stages(bot.network) == ([1, 3, 4, 1, 1], [1, 1, 1, 1])
    for name in ("nnUNetTrainerSegResMamba", "nnUNetTrainerSwinUNETR"):
        trainer = initialized(name, planned, monkeypatch, plans=resenc_plans)
        patch = trainer.configuration_manager.patch_size
        out = trainer.network(torch.randn(1, 1, *patch))
        assert out.shape == (1, 2, *patch)


def plans_of_nnunet_2_1(plans: dict) -> dict:
    """``plans`` as nnU-Net 2.1.1 (U-Mamba's fork) writes them: the U-Net's description in flat
    keys per configuration instead of 2.8's ``architecture`` entry."""
    old = json.loads(json.dumps(plans))
    for configuration in old["configurations"].values():
        if "architecture" not in configuration:
            continue
        kwargs = configuration.pop("architecture")["arch_kwargs"]
        strides = kwargs["strides"]
        configuration.update({
            "UNet_class_name": "PlainConvUNet", "UNet_base_num_features": kwargs["features_per_stage"][0],
            "unet_max_num_features": max(kwargs["features_per_stage"]), "conv_kernel_sizes": kwargs["kernel_sizes"],
            "pool_op_kernel_sizes": kwargs["strides"], "n_conv_per_stage_encoder": kwargs["n_conv_per_stage"],
            "n_conv_per_stage_decoder": kwargs["n_conv_per_stage_decoder"],
            "num_pool_per_axis": [sum(s[axis] > 1 for s in strides) for axis in range(len(strides[0]))],
        })
    return old


def plans_of_official_outputs(plans: dict) -> dict:
    """``plans`` whose 3d_fullres configuration is U-Mamba Bot's small 3D plan of
    tests/data/umamba_bot_3d_official_outputs.pt (tests/test_umamba.py's SMALL_3D), its input size the patch."""
    from tests.test_umamba import SMALL_3D, small_official_input

    plans = json.loads(json.dumps(plans))
    configuration = plans["configurations"]["3d_fullres"]
    configuration["patch_size"] = list(small_official_input("umamba_bot_3d").shape[2:])
    kwargs = configuration["architecture"]["arch_kwargs"]
    kwargs.update({"n_stages": len(SMALL_3D["strides"]), "features_per_stage": SMALL_3D["features_per_stage"],
                   "kernel_sizes": SMALL_3D["kernel_sizes"], "strides": SMALL_3D["strides"],
                   "n_conv_per_stage": SMALL_3D["n_blocks_per_stage"],
                   "n_conv_per_stage_decoder": SMALL_3D["n_conv_per_stage_decoder"]})
    return plans


def test_a_run_of_the_official_umamba_predicts_with_nnunet_2_8(planned, monkeypatch, tmp_path):
    """A run folder laid out as the official U-Mamba (an nnU-Net 2.1.1 fork) writes it: 2.1.1 plans,
    which nnU-Net 2.8 converts, and a checkpoint under the official trainer's name whose
    network_weights are the official network's (its key list, with the weights of
    tests/data/umamba_bot_3d_official_outputs.pt, 2 channels -> 3 classes). nnU-Net 2.8's predictor
    finds our nnUNetTrainerUMambaBot, builds U-Mamba Bot from those plans, loads the weights strictly
    and predicts the logits the official classes computed."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunetv2_segresmamba.networks.umamba import UMambaBot
    from tests.test_umamba import DATA, deterministic_weights, small_official_input

    ws, plans = planned
    for name, path in ws.env.items():
        monkeypatch.setenv(name, path)
    official = torch.load(os.path.join(DATA, "umamba_bot_3d_official_outputs.pt"), weights_only=True)
    run = tmp_path / "nnUNetTrainerUMambaBot__nnUNetPlans__3d_fullres"
    (run / "fold_0").mkdir(parents=True)
    (run / "plans.json").write_text(json.dumps(plans_of_nnunet_2_1(plans_of_official_outputs(plans))))
    dataset = {**dataset_json(ANISOTROPIC), "channel_names": {"0": "a", "1": "b"},
               "labels": {"background": 0, "one": 1, "two": 2}}
    (run / "dataset.json").write_text(json.dumps(dataset))
    torch.save({"network_weights": deterministic_weights(official["shapes"]), "trainer_name": "nnUNetTrainerUMambaBot",
                "init_args": {"configuration": "3d_fullres", "fold": 0}, "current_epoch": 1000,
                "inference_allowed_mirroring_axes": (0, 1, 2)}, run / "fold_0" / "checkpoint_final.pth")

    predictor = nnUNetPredictor(tile_step_size=1.0, use_gaussian=False, use_mirroring=False,  # one window, as is
                                perform_everything_on_device=False, device=torch.device("cpu"))
    with pytest.warns(UserWarning, match="old nnU-Net plans format"):
        predictor.initialize_from_trained_model_folder(str(run), use_folds=(0,))
    assert isinstance(predictor.network, UMambaBot)
    logits = predictor.predict_logits_from_preprocessed_data(small_official_input("umamba_bot_3d")[0])  # strict load
    torch.testing.assert_close(logits, official["outputs"][0][0].half(), atol=2e-3, rtol=2e-3)  # fp16 logits


# ---------------------------------------------------------------- Swin-UMamba


@pytest.mark.parametrize("trainer_name, network", [("nnUNetTrainerSwinUMambaScratch", "SwinUMamba"),
                                                   ("nnUNetTrainerSwinUMambaDScratch", "SwinUMambaD")])
def test_swin_umamba_trainers_build_the_2d_networks_with_the_official_recipe(planned, monkeypatch, trainer_name,
                                                                             network):
    trainer = initialized(trainer_name, planned, monkeypatch, configuration="2d")
    patch = trainer.configuration_manager.patch_size
    assert type(trainer.network).__name__ == network and all(s % 32 == 0 for s in patch)
    (group,) = trainer.optimizer.param_groups  # every parameter decays, as in the official AdamW
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and len(group["params"]) == len(
        list(trainer.network.parameters()))
    assert (group["lr"], group["weight_decay"], group["eps"]) == (1e-4, 5e-2, 1e-5)
    trainer.lr_scheduler.step(trainer.num_epochs)
    assert group["lr"] == pytest.approx(1e-6)  # cosine to 1e-6
    outputs = trainer.network(torch.randn(1, 1, *patch))
    assert [tuple(o.shape[2:]) for o in outputs] == [tuple(int(s * p) for s, p in zip(scale, patch))
                                                     for scale in trainer._get_deep_supervision_scales()]


def test_swin_umamba_refuses_3d_and_names_the_2d_configuration(planned, monkeypatch):
    with pytest.raises(ValueError, match=r"nnUNetTrainerSwinUMamba trains 2D networks only.*nnUNetv2_train DATASET "
                                         r"2d FOLD -tr nnUNetTrainerSwinUMamba"):
        initialized("nnUNetTrainerSwinUMamba", planned, monkeypatch)


def test_imagenet_weights_load_when_training_starts_and_the_encoder_thaws_at_epoch_10(planned, monkeypatch,
                                                                                      tmp_path):
    from nnunetv2_segresmamba.networks.vmamba_weights import VMAMBA_WEIGHTS_VAR
    from tests.test_swin_umamba import vmamba_checkpoint

    trainer = initialized("nnUNetTrainerSwinUMambaD", planned, monkeypatch, configuration="2d")
    os.makedirs(trainer.output_folder, exist_ok=True)
    encoder = trainer.network.vssm_encoder
    monkeypatch.delenv(VMAMBA_WEIGHTS_VAR, raising=False)
    with pytest.raises(OSError, match=f"{VMAMBA_WEIGHTS_VAR} is not set"):
        trainer._maybe_load_imagenet_encoder()

    model = vmamba_checkpoint(str(tmp_path / "vmamba.pth"))
    monkeypatch.setenv(VMAMBA_WEIGHTS_VAR, str(tmp_path / "vmamba.pth"))
    ln = encoder.layers[3].blocks[1].ln_1.weight
    with torch.no_grad():
        ln.add_(1.0)  # as -pretrained_weights loads other weights after the network was built
    trainer._maybe_load_imagenet_encoder()
    assert torch.all(ln == 2.0)
    with torch.no_grad():
        ln.sub_(1.0)  # the encoder as built again
    trainer.current_epoch = 3  # resumed with --c: the checkpoint's weights stay
    trainer._maybe_load_imagenet_encoder()
    assert torch.all(ln == 1.0)
    trainer.current_epoch = 0
    embedding = encoder.patch_embed.proj.weight.clone()
    trainer._maybe_load_imagenet_encoder()
    assert torch.equal(encoder.patch_embed.proj.weight, embedding)  # 1 input channel: VMamba's RGB one does not fit
    for key, value in encoder.state_dict().items():
        if not key.startswith("patch_embed."):
            assert torch.equal(value, model[re.sub(r"^downsamples\.(\d)", r"layers.\1.downsample", key)]), key
    log = open(trainer.log_file).read()
    assert "-pretrained_weights" in log and "resumed" in log and "VMamba ImageNet weights: 204 of" in log

    for epoch, frozen in ((0, True), (9, True), (10, False)):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        for name, parameter in encoder.named_parameters():
            assert parameter.requires_grad == (name.startswith("patch_embed.") or not frozen), (epoch, name)

    trainer.is_ddp, trainer.current_epoch = True, 9  # frozen epochs left: DDP would wait for their gradients
    with pytest.raises(RuntimeError, match=r"DistributedDataParallel.*one GPU and resume on more with --c"):
        trainer.on_train_start()


def test_galore_trainers_project_linear_and_conv_weights_only(planned, monkeypatch):
    from nnunetv2_segresmamba.optimizers.galore import GaLoreAdamW

    trainer = initialized("nnUNetTrainerSegResMamba_lowmem_GaLore_smoke", planned, monkeypatch)
    optimizer, network = trainer.optimizer, trainer.network
    assert isinstance(optimizer, GaLoreAdamW) and network.arch_kwargs["checkpointing"]
    names = {id(p): n for n, p in network.named_parameters()}
    projected = {names[id(p)] for g in optimizer.param_groups if "rank" in g for p in g["params"]}
    linear_and_conv = {f"{n}.weight" for n, m in network.named_modules()
                       if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv3d, torch.nn.ConvTranspose3d))}
    wide = {n for n in linear_and_conv if min(network.get_parameter(n).reshape(
        network.get_parameter(n).shape[0], -1).shape) > trainer.galore_rank}
    assert projected == wide and wide and not any(n.rsplit(".", 1)[-1] in ("A_log", "D") for n in projected)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {trainer.recipe_weight_decay, 0.0}  # A_log, D
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(names)
    assert all(g["rank"] == 64 and g["update_proj_gap"] == 200 and g["scale"] == 0.25
               for g in optimizer.param_groups if "rank" in g)


@pytest.mark.parametrize("name", ["nnUNetTrainerSwinUNETR_GaLore", "nnUNetTrainerSwinUNETR_lowmem_GaLore",
                                  "nnUNetTrainerUNETR_GaLore"])
def test_siblings_galore_trainers_keep_their_recipe_and_take_a_step(name, planned, monkeypatch):
    """MONAI's SwinUNETR and UNETR (AdamW recipes) with GaLore-AdamW: the recipe's lr and weight
    decay, their wide Linear and conv weights projected, and a training step that changes them."""
    from nnunetv2_segresmamba.optimizers.galore import GaLoreAdamW

    trainer = initialized(name, planned, monkeypatch)
    recipe = getattr(trainers, name.replace("_lowmem", "").replace("_GaLore", ""))
    optimizer, network = trainer.optimizer, trainer.network
    assert isinstance(optimizer, GaLoreAdamW) and trainer.activation_checkpointing == ("_lowmem" in name)
    lowmem, flags = "_lowmem" in name, checkpointing_flags(network)
    assert all(flag == lowmem for flag in flags) and (flags or not lowmem)  # MONAI's use_checkpoint where asked
    assert {g["lr"] for g in optimizer.param_groups} == {recipe.recipe_initial_lr}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {recipe.recipe_weight_decay}
    projected = [p for g in optimizer.param_groups if "rank" in g for p in g["params"]]
    assert projected and all(min(p.reshape(p.shape[0], -1).shape) > trainer.galore_rank for p in projected)
    before = [p.detach().clone() for p in projected]
    x = torch.randn(1, 1, *trainer.configuration_manager.patch_size)
    network(x).square().mean().backward()
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, projected))
    adamw_bytes = sum(2 * p.numel() * 4 for p in network.parameters())  # two fp32 moments per weight
    assert 0 < optimizer.state_bytes() < 0.6 * adamw_bytes, optimizer.state_bytes() / adamw_bytes


def test_galore_is_refused_on_a_recipe_without_adamw():
    from nnunetv2_segresmamba.trainers.memory import GaLore

    with pytest.raises(TypeError, match=r"GaLore replaces a recipe's AdamW, but this trainer's recipe trains with SGD"):
        type("nnUNetTrainerSegMamba_GaLore", (GaLore, trainers.nnUNetTrainerSegMamba), {})
    with pytest.raises(TypeError, match="put GaLore first among its bases"):  # else its AdamW would win
        type("nnUNetTrainerSegResMamba_GaLore", (trainers.nnUNetTrainerSegResMamba, GaLore), {})


@pytest.mark.parametrize("mode", ["_lowmem", "_GaLore", "_lowmem_GaLore"])
def test_the_demos_memory_modes_are_the_demo_in_that_mode(mode):
    """The runs whose Dice the memory benchmark compares: the demo's schedule and network, with the
    optimizer and checkpointing of the ``mode`` trainer."""
    demo, variant = trainers.nnUNetTrainerSegResMamba_demo, getattr(trainers, f"nnUNetTrainerSegResMamba{mode}_demo")
    full = getattr(trainers, f"nnUNetTrainerSegResMamba{mode}")
    assert issubclass(variant, demo)
    for attribute in ("comparison_num_epochs", "comparison_iterations_per_epoch", "network_widths", "seed",
                      "recipe_initial_lr", "loss_name"):
        assert getattr(variant, attribute) == getattr(demo, attribute), attribute
    for attribute in ("optimizer_name", "activation_checkpointing"):
        assert getattr(variant, attribute) == getattr(full, attribute), attribute


def test_galore_state_goes_through_nnunets_checkpoint_and_resumes_exactly(planned, monkeypatch, tmp_path):
    """Two steps, nnU-Net's save_checkpoint, load_checkpoint into a new trainer (as --c does): the
    next step gives both the same weights, bit for bit."""
    name = "nnUNetTrainerSegResMamba_lowmem_GaLore_smoke"
    trainer = initialized(name, planned, monkeypatch)
    x = torch.randn(1, 1, *trainer.configuration_manager.patch_size, generator=torch.Generator().manual_seed(0))

    def step(t):
        t.optimizer.zero_grad()
        t.network(x).square().mean().backward()
        t.optimizer.step()

    step(trainer)
    step(trainer)
    os.makedirs(trainer.output_folder, exist_ok=True)
    trainer.save_checkpoint(str(tmp_path / "checkpoint.pth"))
    resumed = initialized(name, planned, monkeypatch)
    resumed.load_checkpoint(str(tmp_path / "checkpoint.pth"))
    assert any("projector" in s for s in resumed.optimizer.state.values())
    step(trainer)
    step(resumed)
    for (key, ours), theirs in zip(trainer.network.state_dict().items(), resumed.network.state_dict().values()):
        assert torch.equal(ours, theirs), key
