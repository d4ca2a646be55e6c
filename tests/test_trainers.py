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
    os.makedirs(os.path.join(folder, "nnUNetPlans_3d_fullres"))  # initialize() infers the data format from
    open(os.path.join(folder, "nnUNetPlans_3d_fullres", "case.b2nd"), "w").close()  # the preprocessed files
    with open(os.path.join(folder, "nnUNetPlans.json")) as f:
        return ws, json.load(f)


def initialized(trainer_name, planned, monkeypatch, plans=None):
    """The trainer ``trainer_name`` as ``nnUNetv2_train`` makes it, with its network and optimizer."""
    ws, planned_plans = planned
    for name, path in ws.env.items():
        monkeypatch.setenv(name, path)
    plans = {**json.loads(json.dumps(plans or planned_plans)), "continue_training": False}
    trainer = getattr(trainers, trainer_name)(plans, "3d_fullres", 0, dataset_json(ANISOTROPIC),
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
