"""End to end through the stock nnU-Net CLI on the dataset of test_e2e.py: a training and a
prediction of each baseline's smoke trainer (the paper's and U-Mamba's; ResEnc M in
test_e2e.py's sweep), a training of each ablation's, and the cascade,
3d_lowres then 3d_cascade_fullres, on plans given a lowres configuration by
``nnunetv2_segresmamba add-cascade``. A module of its own so that it runs beside test_e2e.py
under pytest-xdist."""

import glob
import io
import json
import os

import pytest

from nnunetv2_segresmamba.tools.checkpoints import load_checkpoint_file
from nnunetv2_segresmamba.tools.pipeline import run_command
from nnunetv2_segresmamba.trainers.tracking import CO2_COUNTRY_ENV
from tests.workspaces import CPU_PREDICT, drop_checkpoints, fold_dir
from tests.workspaces import E2E as SPEC

pytestmark = pytest.mark.e2e

DID = str(SPEC.dataset_id)


BASELINES = {  # smoke trainer -> (the patch it must train with ((16, 32, 32) planned), epochs)
    "nnUNetTrainerSegMamba_smoke": ([32, 32, 32], 1),
    "nnUNetTrainerSwinUNETR_smoke": ([64, 64, 64], 1),
    "nnUNetTrainerUNETR_smoke": ([32, 32, 32], 1),
    "nnUNetTrainerComparisonNnUNet_smoke": ([16, 32, 32], 2),
    "nnUNetTrainerUMambaBot_smoke": ([16, 32, 32], 1),
    "nnUNetTrainerUMambaEnc_smoke": ([16, 32, 32], 1),
}
# Variants of networks and recipes that the runs above and TRAINER's cover: found by nnU-Net,
# trained 1 epoch x 2 iterations and validated (nnU-Net's sliding-window prediction and export).
# The forward-and-reverse ToM differs from the forward one by a direction only: built in
# test_trainers.py, its two scan kinds in the kernel tests.
ABLATIONS = ["nnUNetTrainerSegResMambaNoToM_smoke", "nnUNetTrainerSegResMambaForwardToM_smoke",
             "nnUNetTrainerSegResMamba_nnUNetRecipe_smoke", "nnUNetTrainerComparisonNnUNet_paperRecipe_smoke",
             "nnUNetTrainerUMambaBotNoMamba_smoke"]


def train_smoke(e2e_workspace, trainer, epochs):
    """nnUNetv2_train of ``trainer``'s fold 0, with its energy tracked for a given country."""
    run_command(["nnUNetv2_train", DID, "3d_fullres", "0", "-tr", trainer, "-device", "cpu"],
                {**e2e_workspace.env, CO2_COUNTRY_ENV: "DEU"}, quiet=True)
    folder = os.path.dirname(fold_dir(e2e_workspace, trainer))
    metrics = json.load(open(os.path.join(folder, "fold_0", "run_metrics.json")))
    assert metrics["epochs"] == epochs and metrics["energy"]["energy_kwh"] > 0 and metrics["energy"]["country"] == "DEU"
    assert os.path.isfile(os.path.join(folder, "fold_0", "validation", "summary.json"))
    return folder


@pytest.mark.parametrize("trainer", BASELINES)
def test_baseline_trains_and_predicts_through_the_cli(e2e_workspace, trainer):
    """Trains, validates, and predicts without test-time mirroring (8 forward passes a window;
    the prediction with mirroring runs in test_e2e.py)."""
    patch, epochs = BASELINES[trainer]
    folder = train_smoke(e2e_workspace, trainer, epochs)
    with open(os.path.join(folder, "plans.json")) as f:
        assert json.load(f)["configurations"]["3d_fullres"]["patch_size"] == patch

    assert_predicts(e2e_workspace, trainer)


def assert_predicts(e2e_workspace, trainer):
    """``trainer``'s fold 0 predicts the test images, without test-time mirroring."""
    raw = os.path.join(e2e_workspace.path("nnUNet_raw"), SPEC.folder_name)
    out = os.path.join(e2e_workspace.root, f"predictions_{trainer}")
    run_command(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", out, "-d", DID, "-c", "3d_fullres",
                 "-f", "0", "-tr", trainer, *CPU_PREDICT, "--disable_tta"], e2e_workspace.env, quiet=True)
    import SimpleITK as sitk

    predictions = sorted(glob.glob(os.path.join(out, "*.nii.gz")))
    assert len(predictions) == SPEC.num_test
    assert sitk.GetArrayFromImage(sitk.ReadImage(predictions[0])).shape == tuple(SPEC.shape)


@pytest.mark.parametrize("trainer", ABLATIONS)
def test_ablation_trains_and_validates_through_the_cli(e2e_workspace, trainer):
    train_smoke(e2e_workspace, trainer, epochs=1)


def test_checkpointing_and_galore_train_and_predict_through_the_cli(e2e_workspace):
    """Activation checkpointing and GaLore-AdamW together: the checkpoint's optimizer state is
    plain tensors (it reads weights-only), a projector and 2D moments for every Linear and conv
    weight, and the run predicts."""
    import torch

    trainer = "nnUNetTrainerSegResMamba_lowmem_GaLore_smoke"
    folder = train_smoke(e2e_workspace, trainer, epochs=1)
    checkpoint = load_checkpoint_file(os.path.join(folder, "fold_0", "checkpoint_final.pth"), "cpu")
    buffer = io.BytesIO()
    torch.save(checkpoint["optimizer_state"], buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # no Python object in GaLore's state
    groups = checkpoint["optimizer_state"]["param_groups"]
    projected = [i for g in groups if "rank" in g for i in g["params"]]
    state = checkpoint["optimizer_state"]["state"]
    assert projected and all("projector" in state[i] and state[i]["exp_avg"].dim() == 2 for i in projected)
    assert checkpoint["architecture"]["arch_kwargs"]["checkpointing"] is True
    assert_predicts(e2e_workspace, trainer)


# the cascade: 3d_lowres, then 3d_cascade_fullres on its predictions

CASCADE_TRAINER = "nnUNetTrainerSegResMamba_pipeline"  # 1 epoch x 2 iterations: the pipeline, not learning


@pytest.fixture(scope="module")
def cascade(e2e_workspace):
    """A 3d_lowres configuration added to the plans and preprocessed, CASCADE_TRAINER's lowres fold
    "all" (its validation predicts every training case for the next stage) and cascade fold 0."""
    run_command(["nnunetv2_segresmamba", "add-cascade", "-d", DID], e2e_workspace.env, quiet=True)
    run_command(["nnUNetv2_preprocess", "-d", DID, "-c", "3d_lowres", "-np", "2"], e2e_workspace.env, quiet=True)
    for configuration, fold in (("3d_lowres", "all"), ("3d_cascade_fullres", "0")):
        run_command(["nnUNetv2_train", DID, configuration, fold, "-tr", CASCADE_TRAINER, "-device", "cpu"],
                    e2e_workspace.env, quiet=True)


def test_cascade_trains_and_predicts_through_the_cli(e2e_workspace, cascade, tmp_path):
    lowres_run = os.path.dirname(fold_dir(e2e_workspace, CASCADE_TRAINER, "3d_lowres"))
    with open(os.path.join(lowres_run, "plans.json")) as f:
        configurations = json.load(f)["configurations"]
    lowres = configurations["3d_lowres"]
    assert lowres["next_stage"] == "3d_cascade_fullres" and lowres["patch_size"] == [8, 16, 16]
    next_stage = os.listdir(os.path.join(lowres_run, "predicted_next_stage", "3d_cascade_fullres"))
    assert len({name.split(".")[0] for name in next_stage}) == SPEC.num_train, \
        "the lowres stage did not predict every training case for the next stage"
    cascade_fold = fold_dir(e2e_workspace, CASCADE_TRAINER, "3d_cascade_fullres")
    assert os.path.isfile(os.path.join(cascade_fold, "checkpoint_final.pth"))
    weights = load_checkpoint_file(os.path.join(cascade_fold, "checkpoint_final.pth"), "cpu")
    assert weights["network_weights"]["stem.weight"].shape[1] == SPEC.num_channels + SPEC.num_classes  # + one-hot

    images = os.path.join(e2e_workspace.path("nnUNet_raw"), SPEC.folder_name, "imagesTs")
    run_command(["nnUNetv2_predict", "-i", images, "-o", str(tmp_path / "lowres"), "-d", DID, "-c", "3d_lowres",
                 "-f", "all", "-tr", CASCADE_TRAINER, *CPU_PREDICT], e2e_workspace.env, quiet=True)
    run_command(["nnUNetv2_predict", "-i", images, "-o", str(tmp_path / "cascade"), "-d", DID, "-c",
                 "3d_cascade_fullres", "-f", "0", "-tr", CASCADE_TRAINER, "-prev_stage_predictions",
                 str(tmp_path / "lowres"), *CPU_PREDICT], e2e_workspace.env, quiet=True)
    import SimpleITK as sitk

    predictions = sorted(glob.glob(str(tmp_path / "cascade" / "*.nii.gz")))
    assert len(predictions) == SPEC.num_test
    assert sitk.GetArrayFromImage(sitk.ReadImage(predictions[0])).shape == tuple(SPEC.shape)
    for run in (lowres_run, os.path.dirname(cascade_fold)):  # used by no other test: free their disk now
        drop_checkpoints(run)
