"""``nnunetv2_segresmamba add-cascade`` on a (3, 0.8, 0.8) mm dataset planned by nnU-Net: the
lowres spacing coarsens the fine axes first, as nnU-Net's planner does, and the planner named in
the plans plans it."""

import json
import os
import shutil

import numpy as np
import pytest

from nnunetv2_segresmamba.tools.cascade import lowres_spacing, planner_class
from nnunetv2_segresmamba.tools.pipeline import Workspace, run_command
from tests.workspaces import ANISOTROPIC

DID = str(ANISOTROPIC.dataset_id)
RESENC_M = "nnUNetResEncUNetMPlans"  # the plans of nnU-Net's planner nnUNetPlannerResEncM


@pytest.fixture(scope="module")
def cascades(anisotropic_workspace, tmp_path_factory) -> dict[str, dict]:
    """The plans of nnU-Net's default planner and of nnUNetPlannerResEncM, each given a cascade by
    add-cascade with the default factor; keyed by plans name. On a copy of the shared workspace."""
    ws = Workspace(str(tmp_path_factory.mktemp("cascade") / "nnunet"))
    shutil.copytree(anisotropic_workspace.root, ws.root)
    run_command(["nnUNetv2_plan_experiment", "-d", DID, "-pl", "nnUNetPlannerResEncM"], ws.env, quiet=True)
    plans = {}
    for plans_name in ("nnUNetPlans", RESENC_M):
        run_command(["nnunetv2_segresmamba", "add-cascade", "-d", DID, "-p", plans_name], ws.env, quiet=True)
        with open(os.path.join(ws.path("nnUNet_preprocessed"), ANISOTROPIC.folder_name, f"{plans_name}.json")) as f:
            plans[plans_name] = json.load(f)
    return plans


@pytest.mark.e2e
def test_lowres_coarsens_the_fine_axes_first(cascades):
    configurations = cascades["nnUNetPlans"]["configurations"]
    fullres, lowres = configurations["3d_fullres"], configurations["3d_lowres"]
    assert fullres["spacing"] == pytest.approx([3.0, 0.8, 0.8])
    # nnU-Net's rule: the 0.8 mm axes grow by 3% a step until 3 mm is at most twice theirs (22 steps,
    # x1.916), then every axis together until the median image has 2^3 fewer voxels (x1.296)
    assert lowres["spacing"] == pytest.approx([3.889, 1.987, 1.987], abs=1e-3)  # uniform: [6.0, 1.6, 1.6]
    assert lowres["median_image_size_in_voxels"] == [15, 39, 32]  # from [20, 96, 80]
    assert lowres["data_identifier"] == "nnUNetPlans_3d_lowres" and lowres["next_stage"] == "3d_cascade_fullres"
    assert lowres["architecture"]["network_class_name"].endswith(".PlainConvUNet")
    assert configurations["3d_cascade_fullres"] == {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}


@pytest.mark.e2e
def test_the_planner_named_in_the_plans_plans_the_lowres(cascades):
    plans = cascades[RESENC_M]
    lowres = plans["configurations"]["3d_lowres"]
    assert plans["experiment_planner_used"] == "nnUNetPlannerResEncM"
    assert lowres["architecture"]["network_class_name"].endswith(".ResidualEncoderUNet")
    assert lowres["data_identifier"] == f"{RESENC_M}_3d_lowres"
    assert lowres["spacing"] == pytest.approx([3.889, 1.987, 1.987], abs=1e-3)


@pytest.mark.parametrize("fullres,factor,expected", [
    ((2.0, 1.0, 1.0), 2, [4.0, 2.0, 2.0]),  # no axis more than twice finer: every axis x factor
    ((1.0, 1.0, 1.0), 3, [3.0, 3.0, 3.0]),
    ((0.8, 3.0, 0.8), 2, [1.9873, 3.8893, 1.9873]),  # the coarse axis anywhere
    ((5.0, 0.5, 0.5), 1.5, [5.0, 0.9186, 0.9186]),  # 1.5^3 fewer voxels before 0.5 mm catch up with 5 mm
])
def test_lowres_spacing(fullres, factor, expected):
    spacing = lowres_spacing(fullres, factor)
    assert spacing.tolist() == pytest.approx(expected, abs=1e-4)
    assert np.prod(spacing / np.array(fullres)) == pytest.approx(factor ** 3)


def test_a_planner_nnunet_does_not_know_is_explained():
    with pytest.raises(ValueError, match="'NoSuchPlanner', which is not in nnunetv2.experiment_planning"):
        planner_class("NoSuchPlanner")
