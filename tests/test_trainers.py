"""Trainers built as nnU-Net builds them (``__init__`` then ``initialize``) from the plans that
nnU-Net's planner writes for a (3, 0.8, 0.8) mm dataset: optimizer groups and recipes."""

import json
import os

import pytest
import torch

from nnunetv2_segresmamba import trainers
from nnunetv2_segresmamba.tools.pipeline import Workspace, run_command
from nnunetv2_segresmamba.tools.synthetic import SyntheticSpec, dataset_json, make_dataset

ANISOTROPIC = SyntheticSpec(dataset_id=993, name="Aniso", num_train=2, num_test=0, shape=(20, 96, 80),
                            spacing=(3.0, 0.8, 0.8), num_classes=1)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """(workspace, plans) after nnU-Net's fingerprint and experiment planning (no preprocessing)."""
    ws = Workspace(str(tmp_path_factory.mktemp("planned")))
    make_dataset(ws.path("nnUNet_raw"), ANISOTROPIC)
    run_command(["nnUNetv2_extract_fingerprint", "-d", str(ANISOTROPIC.dataset_id), "-np", "1"], ws.env, quiet=True)
    run_command(["nnUNetv2_plan_experiment", "-d", str(ANISOTROPIC.dataset_id)], ws.env, quiet=True)
    folder = os.path.join(ws.path("nnUNet_preprocessed"), ANISOTROPIC.folder_name)
    for configuration in ("3d_fullres", "2d"):  # initialize() infers the data format from the preprocessed files
        os.makedirs(os.path.join(folder, f"nnUNetPlans_{configuration}"))
        open(os.path.join(folder, f"nnUNetPlans_{configuration}", "case.b2nd"), "w").close()
    with open(os.path.join(folder, "nnUNetPlans.json")) as f:
        return ws, json.load(f)


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


def test_optimizers_are_fused_where_torch_has_the_kernels():
    from nnunetv2_segresmamba.trainers.base import fused_if_available

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


def test_strides_equal_nnunets_pooling_and_travel_in_the_plans(planned, monkeypatch):
    _, plans = planned
    pools = [tuple(p) for p in plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["strides"]]
    assert pools[1] == (1, 2, 2)  # nnU-Net pools the 0.8 mm axes first
    trainer = initialized("nnUNetTrainerSegResMamba", planned, monkeypatch)
    kwargs = trainer.configuration_manager.configuration["architecture"]["arch_kwargs"]
    assert trainer.plans_manager.plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] \
        == "nnunetv2_segresmamba.networks.segresmamba.SegResMamba"
    halvings = [tuple(s) for s in kwargs["stage_strides"]] + [tuple(kwargs["block_strides"][-1])]
    assert halvings == (pools[1:] + [(1, 1, 1)] * 5)[:5]  # stem, 3 downsamplings, deepest block = nnU-Net's pools
    assert [tuple(s) for s in kwargs["block_strides"][:3]] == pools[2:5]
    assert kwargs["patch_size"] == plans["configurations"]["3d_fullres"]["patch_size"]
    assert trainer.network.arch_kwargs == kwargs
    assert trainer.network.state_dict()["_extra_state"] == {"arch_kwargs": kwargs}  # and so in every checkpoint


def test_a_checkpoint_of_another_architecture_is_refused_naming_the_plans(planned, monkeypatch):
    trainer = initialized("nnUNetTrainerSegResMamba", planned, monkeypatch)
    weights = trainer.network.state_dict()
    weights["_extra_state"] = {"arch_kwargs": {**weights["_extra_state"]["arch_kwargs"], "patch_size": [20, 64, 64]}}
    with pytest.raises(ValueError, match=r"patch_size: checkpoint \[20, 64, 64\]") as error:
        trainer.network.load_state_dict(weights)
    assert "Dataset993_Aniso" in str(error.value) and "plans.json" in str(error.value)


def test_runs_from_before_the_stored_architecture_still_load(planned, monkeypatch):
    """Their plans.json holds nnU-Net's architecture and their checkpoints no ``_extra_state``."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_segresmamba.networks.segresmamba import legacy_plan_strides

    _, plans = planned  # as nnU-Net planned them, as the run's plans.json of an older run holds them
    manager = PlansManager(plans)
    legacy = trainers.nnUNetTrainerSegResMamba.build_network_architecture(
        manager, manager.get_configuration("3d_fullres"), 1, 2, False)
    stage, block = legacy_plan_strides(plans["configurations"]["3d_fullres"]["patch_size"])
    assert legacy.arch_kwargs["stage_strides"] == [list(s) for s in stage] and legacy.arch_kwargs["patch_size"] is None
    old_checkpoint = {k: v for k, v in legacy.state_dict().items() if k != "_extra_state"}
    legacy.load_state_dict(old_checkpoint, strict=True)


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


def test_an_optimizer_state_with_one_group_resumes_in_the_two_groups():
    """Runs saved before the weight-decay groups keep their AdamW moments at --c."""
    from nnunetv2_segresmamba.operators import TriOrientedMamba
    from nnunetv2_segresmamba.trainers.base import parameter_groups, regroup_optimizer_state

    torch.manual_seed(0)
    layer = TriOrientedMamba(8, d_state=4)
    old = torch.optim.AdamW(layer.parameters(), lr=1e-3, weight_decay=1e-5)
    layer(torch.randn(1, 6, 8), num_slices=2).sum().backward()
    old.step()
    new = torch.optim.AdamW(parameter_groups(layer, 1e-5), lr=1e-3, weight_decay=1e-5)
    new.load_state_dict(regroup_optimizer_state(old.state_dict(), new.param_groups, list(layer.parameters())))
    assert [g["weight_decay"] for g in new.param_groups] == [1e-5, 0.0]
    for parameter in layer.parameters():
        torch.testing.assert_close(new.state[parameter]["exp_avg"], old.state[parameter]["exp_avg"])


def test_2d_configuration_trains_the_2d_segresmamba_strided_by_the_2d_plan(planned, monkeypatch):
    from nnunetv2_segresmamba.networks.segresmamba import strides_from_pools

    _, plans = planned
    planned_2d = plans["configurations"]["2d"]
    trainer = initialized("nnUNetTrainerSegResMamba", planned, monkeypatch, configuration="2d")
    kwargs = trainer.plans_manager.plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    stage, block = strides_from_pools(planned_2d["architecture"]["arch_kwargs"]["strides"])
    assert kwargs["spatial_dims"] == 2 and kwargs["patch_size"] == planned_2d["patch_size"]
    assert kwargs["stage_strides"] == [list(s) for s in stage] and kwargs["block_strides"] == [list(s) for s in block]
    assert trainer.network.arch_kwargs == kwargs and trainer.network.spatial_dims == 2
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
