"""End to end through the stock nnU-Net CLI, as subprocesses, on a tiny synthetic dataset.

plan_and_preprocess -> train (killed after its first checkpoint) -> resume with --c ->
--val --npz -> predict -> evaluate, with a Dice that must beat chance.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from nnunetv2_segresmamba.tools.pipeline import Workspace, evaluate_folder, run_command
from nnunetv2_segresmamba.tools.synthetic import SyntheticSpec, make_dataset
from nnunetv2_segresmamba.trainers.tracking import CO2_COUNTRY_ENV
from tests.workspaces import drop_checkpoints

pytestmark = pytest.mark.e2e

TRAINER = "nnUNetTrainerSegResMamba_smoke"
SPEC = SyntheticSpec(dataset_id=991, name="E2E", num_train=6, num_test=2, shape=(16, 32, 32),
                     spacing=(2.0, 1.0, 1.0), num_classes=2, num_channels=2)
DID = str(SPEC.dataset_id)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = Workspace(str(tmp_path_factory.mktemp("nnunet")))
    make_dataset(ws.path("nnUNet_raw"), SPEC)
    run_command(["nnUNetv2_plan_and_preprocess", "-d", DID, "-c", "3d_fullres", "-np", "2",
                 "--verify_dataset_integrity"], ws.env, quiet=True)
    yield ws
    drop_checkpoints(ws.root)


def fold_dir(ws, trainer=TRAINER):
    return os.path.join(ws.path("nnUNet_results"), SPEC.folder_name, f"{trainer}__nnUNetPlans__3d_fullres", "fold_0")


@pytest.fixture(scope="module")
def trained(workspace):
    """TRAINER's fold 0, killed after its first checkpoint and resumed with --c to the end.
    Returns the log of the resumed process."""
    train = ["nnUNetv2_train", DID, "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"]
    latest = os.path.join(fold_dir(workspace), "checkpoint_latest.pth")
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), train[0]), *train[1:]],
                            env={**os.environ, **workspace.env}, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)  # own process group: the kill reaches the data workers
    try:
        deadline = time.time() + 900
        while not os.path.exists(latest) and proc.poll() is None and time.time() < deadline:
            time.sleep(1)
        assert os.path.exists(latest), "no checkpoint_latest.pth after the first epoch"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # checkpoints are written under another name, then renamed
        proc.wait()
    assert not os.path.exists(os.path.join(fold_dir(workspace), "checkpoint_final.pth"))

    run_command(train + ["--c"], workspace.env, quiet=True)
    logs = sorted(glob.glob(os.path.join(fold_dir(workspace), "training_log_*.txt")))
    return open(logs[-1]).read()


def test_train_killed_then_resumed_with_c(workspace, trained):
    assert re.search(r": Epoch 0 ?$", trained, re.M) is None, "resume restarted from epoch 0"
    assert re.search(r": Epoch 1 ?$", trained, re.M) and re.search(r": Epoch 2 ?$", trained, re.M)
    assert os.path.exists(os.path.join(fold_dir(workspace), "checkpoint_final.pth"))
    metrics = json.load(open(os.path.join(fold_dir(workspace), "run_metrics.json")))
    assert metrics["epochs"] == 3 and metrics["first_epoch_this_process"] == 1


def test_validation_with_npz_then_predict_beats_chance(workspace, trained):
    run_command(["nnUNetv2_train", DID, "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu", "--val", "--npz"],
                workspace.env, quiet=True)
    validation = os.path.join(fold_dir(workspace), "validation")
    assert glob.glob(os.path.join(validation, "*.npz")), "--val --npz wrote no probabilities"
    assert os.path.exists(os.path.join(validation, "summary.json"))

    raw = os.path.join(workspace.path("nnUNet_raw"), SPEC.folder_name)
    out = os.path.join(workspace.root, "predictions")
    run_command(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", out, "-d", DID, "-c", "3d_fullres",
                 "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"], workspace.env, quiet=True)
    summary = evaluate_folder(os.path.join(raw, "labelsTs"), out, [1, 2], workspace.env)
    dice = summary["foreground_mean"]["Dice"]
    chance = chance_dice(os.path.join(raw, "labelsTs"), [1, 2])
    print(f"mean Dice {dice:.3f}, chance {chance:.3f}")
    assert dice > chance + 0.1, f"Dice {dice:.3f} is not above chance ({chance:.3f})"


def chance_dice(label_dir, classes):
    """Mean Dice of the best trivial guess per class (every voxel of that class): 2p / (1 + p)."""
    import SimpleITK as sitk

    labels = np.concatenate([sitk.GetArrayFromImage(sitk.ReadImage(f)).ravel()
                             for f in sorted(glob.glob(os.path.join(label_dir, "*.nii.gz")))])
    fractions = [np.mean(labels == c) for c in classes]
    return float(np.mean([2 * p / (1 + p) for p in fractions]))


def test_2d_configuration_is_refused_with_advice(workspace):
    with pytest.raises(RuntimeError, match="Use a 3D configuration"):
        run_command(["nnUNetv2_train", DID, "2d", "0", "-tr", TRAINER, "-device", "cpu"], workspace.env, quiet=True)


def test_missing_results_folder_variable_is_explained(workspace):
    env = {k: v for k, v in {**os.environ, **workspace.env}.items() if k != "nnUNet_results"}
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "nnUNetv2_train"), DID, "3d_fullres", "0",
                             "-tr", TRAINER, "-device", "cpu"], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "export nnUNet_results=" in result.stdout + result.stderr


SIBLINGS = {  # smoke trainer -> (patch it must train with ((16, 32, 32) planned), epochs)
    "nnUNetTrainerSegMamba_smoke": ([32, 32, 32], 2),
    "nnUNetTrainerSwinUNETR_smoke": ([64, 64, 64], 2),
    "nnUNetTrainerUNETR_smoke": ([32, 32, 32], 2),
    "nnUNetTrainerComparisonNnUNet_smoke": ([16, 32, 32], 2),
    # the ablations, 1 epoch x 2 iterations
    "nnUNetTrainerSegResMambaNoToM_smoke": ([16, 32, 32], 1),
    "nnUNetTrainerSegResMambaForwardToM_smoke": ([16, 32, 32], 1),
    "nnUNetTrainerSegResMambaForwardReverseToM_smoke": ([16, 32, 32], 1),
    "nnUNetTrainerSegResMamba_nnUNetRecipe_smoke": ([16, 32, 32], 1),
    "nnUNetTrainerComparisonNnUNet_paperRecipe_smoke": ([16, 32, 32], 1),
}


@pytest.mark.parametrize("trainer", SIBLINGS)
def test_sibling_trains_and_predicts_through_the_cli(workspace, trainer):
    run_command(["nnUNetv2_train", DID, "3d_fullres", "0", "-tr", trainer, "-device", "cpu"],
                {**workspace.env, CO2_COUNTRY_ENV: "DEU"}, quiet=True)
    folder = os.path.dirname(fold_dir(workspace, trainer))
    assert os.path.exists(os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    metrics = json.load(open(os.path.join(folder, "fold_0", "run_metrics.json")))
    patch, epochs = SIBLINGS[trainer]
    assert metrics["epochs"] == epochs and metrics["energy"]["energy_kwh"] > 0 and metrics["energy"]["country"] == "DEU"
    with open(os.path.join(folder, "plans.json")) as f:
        assert json.load(f)["configurations"]["3d_fullres"]["patch_size"] == patch

    raw = os.path.join(workspace.path("nnUNet_raw"), SPEC.folder_name)
    out = os.path.join(workspace.root, f"predictions_{trainer}")
    run_command(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", out, "-d", DID, "-c", "3d_fullres",
                 "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1"], workspace.env, quiet=True)
    import SimpleITK as sitk

    predictions = sorted(glob.glob(os.path.join(out, "*.nii.gz")))
    assert len(predictions) == SPEC.num_test
    assert sitk.GetArrayFromImage(sitk.ReadImage(predictions[0])).shape == tuple(SPEC.shape)


def copied_run(workspace, tmp_path, edit_plans=None, checkpoint_bytes=None):
    """A copy of TRAINER's trained run under ``tmp_path/nnUNet_results`` (the trained run is left
    alone): plans.json as ``edit_plans`` changes it, the checkpoint linked or replaced by bytes.
    Returns (nnUNet_results of the copy, the copy's run folder)."""
    results = tmp_path / "nnUNet_results"
    trained_run = os.path.dirname(fold_dir(workspace))
    copy = results / os.path.relpath(trained_run, workspace.path("nnUNet_results"))
    os.makedirs(copy / "fold_0")
    shutil.copy(os.path.join(trained_run, "dataset.json"), copy / "dataset.json")
    with open(os.path.join(trained_run, "plans.json")) as f:
        plans = json.load(f)
    (copy / "plans.json").write_text(json.dumps(edit_plans(plans) if edit_plans else plans))
    if checkpoint_bytes is None:
        os.symlink(os.path.join(fold_dir(workspace), "checkpoint_final.pth"), copy / "fold_0" / "checkpoint_final.pth")
    else:
        (copy / "fold_0" / "checkpoint_final.pth").write_bytes(checkpoint_bytes)
    return str(results), copy


def predict(workspace, tmp_path, results=None, images=None):
    images = images or os.path.join(workspace.path("nnUNet_raw"), SPEC.folder_name, "imagesTs")
    run_command(["nnUNetv2_predict", "-i", images, "-o", str(tmp_path / "out"), "-d", DID, "-c", "3d_fullres",
                 "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"],
                {**workspace.env, **({"nnUNet_results": results} if results else {})}, quiet=True)


def test_predict_refuses_a_patch_edited_in_the_runs_plans(workspace, trained, tmp_path):
    def edit(plans):
        assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["patch_size"] == [16, 32, 32]
        plans["configurations"]["3d_fullres"]["patch_size"] = [16, 32, 48]
        return plans

    results, copy = copied_run(workspace, tmp_path, edit_plans=edit)
    with pytest.raises(RuntimeError, match=r"'patch_size' \[16, 32, 48\] differs") as error:
        predict(workspace, tmp_path, results)
    assert str(copy / "plans.json") in str(error.value).replace("\n", "")


def test_predict_from_a_truncated_checkpoint_names_it(workspace, trained, tmp_path):
    with open(os.path.join(fold_dir(workspace), "checkpoint_final.pth"), "rb") as f:
        head = f.read(100_000)
    results, copy = copied_run(workspace, tmp_path, checkpoint_bytes=head)
    with pytest.raises(RuntimeError, match="is not a readable checkpoint") as error:
        predict(workspace, tmp_path, results)
    assert str(copy / "fold_0" / "checkpoint_final.pth") in str(error.value).replace("\n", "")


def test_predict_with_a_channel_missing_says_which_files(workspace, trained, tmp_path):
    raw = os.path.join(workspace.path("nnUNet_raw"), SPEC.folder_name)
    for image in glob.glob(os.path.join(raw, "imagesTs", "*_0000.nii.gz")):  # SPEC has 2 channels
        shutil.copy(image, tmp_path)
    with pytest.raises(RuntimeError, match=r"trained on 2 input channel\(s\).* but got 1") as error:
        predict(workspace, tmp_path, images=str(tmp_path))
    assert "CASE_0000 to CASE_0001" in str(error.value)


def test_resume_from_a_truncated_checkpoint_names_it_and_keeps_it(workspace, tmp_path):
    folder = os.path.join(os.path.dirname(fold_dir(workspace)), "fold_1")
    os.makedirs(folder)
    checkpoint = os.path.join(folder, "checkpoint_latest.pth")
    torch.save({"network_weights": {"w": torch.zeros(1000)}}, tmp_path / "whole.pth")
    truncated = (tmp_path / "whole.pth").read_bytes()[:2000]  # as a kill during torch.save used to leave it
    open(checkpoint, "wb").write(truncated)
    with pytest.raises(RuntimeError, match="is not a readable checkpoint") as error:
        run_command(["nnUNetv2_train", DID, "3d_fullres", "1", "-tr", TRAINER, "-device", "cpu", "--c"],
                    workspace.env, quiet=True)
    message = str(error.value).replace("\n", "")
    assert checkpoint in message and f"mv {checkpoint} {checkpoint}.corrupt" in message
    assert open(checkpoint, "rb").read() == truncated
