"""End to end through the stock nnU-Net CLI, as subprocesses, on a tiny synthetic dataset.

plan_and_preprocess -> train (killed after its first checkpoint) -> resume with --c ->
--val --npz -> predict -> evaluate, with a Dice that must beat chance; fine-tuning on another
dataset with -pretrained_weights; bad inputs. Then nnU-Net's whole flow: 2d and 3d_fullres
folds through ``nnunetv2_segresmamba sweep`` and its report, find_best_configuration,
prediction per configuration, the ensemble and the postprocessing its instructions say. The
family's other trainers and the cascade: test_e2e_family.py.
"""

import csv
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from nnunetv2_segresmamba.tools.checkpoints import load_checkpoint_file
from nnunetv2_segresmamba.tools.pipeline import evaluate_folder, run_command
from nnunetv2_segresmamba.tools.synthetic import SyntheticSpec, make_dataset
from tests.workspaces import CPU_PREDICT, predict_in_process
from tests.workspaces import E2E as SPEC
from tests.workspaces import fold_dir as trainer_fold_dir

pytestmark = pytest.mark.e2e

TRAINER = "nnUNetTrainerSegResMamba_smoke"
DID = str(SPEC.dataset_id)
VERIFY_DATASET_INTEGRITY = True  # the synthetic dataset passes nnU-Net's check (read by conftest's e2e_workspace)


def fold_dir(ws, trainer=TRAINER, configuration="3d_fullres", fold="0"):
    return trainer_fold_dir(ws, trainer, configuration, fold)


@pytest.fixture(scope="module")
def trained(e2e_workspace):
    """TRAINER's fold 0, killed after its first checkpoint and resumed with --c to the end.
    Returns the log of the resumed process."""
    train = ["nnUNetv2_train", DID, "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"]
    latest = os.path.join(fold_dir(e2e_workspace), "checkpoint_latest.pth")
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), train[0]), *train[1:]],
                            env={**os.environ, **e2e_workspace.env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT,
                            start_new_session=True)  # own process group: the kill reaches the data workers
    try:
        deadline = time.time() + 900
        while not os.path.exists(latest) and proc.poll() is None and time.time() < deadline:
            time.sleep(1)
        assert os.path.exists(latest), "no checkpoint_latest.pth after the first epoch"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # checkpoints are written under another name, then renamed
        proc.wait()
    assert not os.path.exists(os.path.join(fold_dir(e2e_workspace), "checkpoint_final.pth"))

    run_command(train + ["--c"], e2e_workspace.env, quiet=True)
    logs = sorted(glob.glob(os.path.join(fold_dir(e2e_workspace), "training_log_*.txt")))
    return open(logs[-1]).read()


def test_train_killed_then_resumed_with_c(e2e_workspace, trained):
    assert re.search(r": Epoch 0 ?$", trained, re.M) is None, "resume restarted from epoch 0"
    assert re.search(r": Epoch 1 ?$", trained, re.M) and re.search(r": Epoch 2 ?$", trained, re.M)
    assert os.path.exists(os.path.join(fold_dir(e2e_workspace), "checkpoint_final.pth"))
    metrics = json.load(open(os.path.join(fold_dir(e2e_workspace), "run_metrics.json")))
    assert metrics["epochs"] == 3 and metrics["first_epoch_this_process"] == 1


@pytest.fixture(scope="module")
def predicted(e2e_workspace, trained):
    """TRAINER's 3d_fullres fold 0 predictions of imagesTs, with probabilities (for the ensemble)."""
    raw = os.path.join(e2e_workspace.path("nnUNet_raw"), SPEC.folder_name)
    out = os.path.join(e2e_workspace.root, "predictions")
    run_command(["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", out, "-d", DID, "-c", "3d_fullres",
                 "-f", "0", "-tr", TRAINER, "--save_probabilities", "-device", "cpu", "-npp", "1", "-nps", "1"],
                e2e_workspace.env, quiet=True)
    return out


def test_validation_with_npz_then_predict_beats_chance(e2e_workspace, trained, predicted):
    run_command(["nnUNetv2_train", DID, "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu", "--val", "--npz"],
                e2e_workspace.env, quiet=True)
    validation = os.path.join(fold_dir(e2e_workspace), "validation")
    assert glob.glob(os.path.join(validation, "*.npz")), "--val --npz wrote no probabilities"
    assert os.path.exists(os.path.join(validation, "summary.json"))

    raw = os.path.join(e2e_workspace.path("nnUNet_raw"), SPEC.folder_name)
    out = predicted
    summary = evaluate_folder(os.path.join(raw, "labelsTs"), out, [1, 2], e2e_workspace.env)
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


FIRST_BATCHES = """
import hashlib, json, os, sys, torch
from nnunetv2_segresmamba.trainers import nnUNetTrainerSegResMamba_smoke
plans, dataset = (json.load(open(os.path.join(sys.argv[1], f))) for f in ("nnUNetPlans.json", "dataset.json"))
digests = []
for epoch in map(int, sys.argv[2:]):
    trainer = nnUNetTrainerSegResMamba_smoke({**plans, "continue_training": False}, "3d_fullres", 0, dataset,
                                             device=torch.device("cpu"))
    trainer.initialize()
    trainer.current_epoch = epoch  # as load_checkpoint sets it
    train_loader, _ = trainer.get_dataloaders()
    digests.append(hashlib.sha256(next(train_loader)["data"].numpy().tobytes()).hexdigest())
print(json.dumps(digests))
"""


def test_a_resumed_seeded_run_draws_other_batches_than_epoch_0(e2e_workspace, tmp_path):
    """``--c`` loads the checkpoint, and with it ``current_epoch``, before nnU-Net makes the loaders
    (``on_train_start``); set as it sets it, a seeded run resumed at epoch 1 must not replay epoch
    0's batches, and a fresh one draws the same again. In a process of its own, as a run's: the
    draws of a seeded run are the same only in a process whose generators nothing else uses."""
    preprocessed = os.path.join(e2e_workspace.path("nnUNet_preprocessed"), SPEC.folder_name)
    env = {**os.environ, **e2e_workspace.env, "nnUNet_results": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", FIRST_BATCHES, preprocessed, "0", "0", "1"], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    epoch_0, again, epoch_1 = json.loads(result.stdout.strip().splitlines()[-1])
    assert epoch_0 == again, "a seeded run drew other batches at epoch 0"
    assert epoch_1 != epoch_0, "a run resumed at epoch 1 replays the batches of epoch 0"


FINE_TUNE = SyntheticSpec(dataset_id=992, name="FineTune", num_train=5, num_test=1, shape=(16, 48, 48),
                          spacing=(2.0, 1.0, 1.0), num_classes=1, num_channels=2, seed=1)


def test_fine_tuning_on_another_dataset_with_pretrained_weights(e2e_workspace, trained):
    """nnU-Net's -pretrained_weights from SPEC's trained fold into a dataset with another patch
    ((16, 48, 48), strided as SPEC's) and other classes: every tensor but the output layer is
    SPEC's, moved by the two AdamW steps of lr 1e-4 only; then the fine-tuned model predicts."""
    make_dataset(e2e_workspace.path("nnUNet_raw"), FINE_TUNE)
    did = str(FINE_TUNE.dataset_id)
    run_command(["nnUNetv2_plan_and_preprocess", "-d", did, "-c", "3d_fullres", "-np", "2"], e2e_workspace.env,
                quiet=True)
    pretrained = os.path.join(fold_dir(e2e_workspace), "checkpoint_final.pth")
    trainer = "nnUNetTrainerSegResMamba_pipeline"  # SmallWidths, as TRAINER; 1 epoch x 2 iterations
    run_command(["nnUNetv2_train", did, "3d_fullres", "0", "-tr", trainer, "-device", "cpu", "-pretrained_weights",
                 pretrained], e2e_workspace.env, quiet=True)
    run = os.path.join(e2e_workspace.path("nnUNet_results"), FINE_TUNE.folder_name,
                       f"{trainer}__nnUNetPlans__3d_fullres")
    source = load_checkpoint_file(pretrained, "cpu")
    tuned = load_checkpoint_file(os.path.join(run, "fold_0", "checkpoint_final.pth"), "cpu")
    assert tuned["architecture"]["arch_kwargs"]["patch_size"] == [16, 48, 48]
    assert source["architecture"]["arch_kwargs"]["patch_size"] == [16, 32, 32]
    for name, weight in tuned["network_weights"].items():
        if ".seg_layers." in name:  # FINE_TUNE's 2 outputs, SPEC's 3: not transferred
            assert weight.shape[1 if "weight" in name else 0] == 2, name
            continue
        moved = (weight - source["network_weights"][name]).abs().max().item()
        assert moved < 1e-3, f"{name} moved by {moved}: not SPEC's weights"

    predictions = predict_in_process(e2e_workspace, trainer, spec=FINE_TUNE)
    assert len(predictions) == 1 and predictions[0].shape == (16, 48, 48)


def planned_trainer(e2e_workspace, monkeypatch, trainer_class, env):
    """``trainer_class`` made as nnUNetv2_train makes it for SPEC's 3d_fullres fold 0, with ``env``."""
    for name in e2e_workspace.env:
        monkeypatch.delenv(name, raising=False)
    for name, path in env.items():
        monkeypatch.setenv(name, path)
    preprocessed = os.path.join(e2e_workspace.path("nnUNet_preprocessed"), SPEC.folder_name)
    plans, dataset = (json.load(open(os.path.join(preprocessed, f))) for f in ("nnUNetPlans.json", "dataset.json"))
    return trainer_class({**plans, "continue_training": False}, "3d_fullres", 0, dataset, device=torch.device("cpu"))


def test_missing_results_folder_variable_is_explained(e2e_workspace, monkeypatch):
    from nnunetv2_segresmamba.trainers import nnUNetTrainerSegResMamba_smoke

    env = {k: v for k, v in e2e_workspace.env.items() if k != "nnUNet_results"}
    with pytest.raises(OSError, match="export nnUNet_results="):
        planned_trainer(e2e_workspace, monkeypatch, nnUNetTrainerSegResMamba_smoke, env)


def copied_run(e2e_workspace, tmp_path, edit_plans=None, checkpoint_bytes=None):
    """A copy of TRAINER's trained run under ``tmp_path/nnUNet_results`` (the trained run is left
    alone): plans.json as ``edit_plans`` changes it, the checkpoint linked or replaced by bytes.
    Returns (nnUNet_results of the copy, the copy's run folder)."""
    results = tmp_path / "nnUNet_results"
    trained_run = os.path.dirname(fold_dir(e2e_workspace))
    copy = results / os.path.relpath(trained_run, e2e_workspace.path("nnUNet_results"))
    os.makedirs(copy / "fold_0")
    shutil.copy(os.path.join(trained_run, "dataset.json"), copy / "dataset.json")
    with open(os.path.join(trained_run, "plans.json")) as f:
        plans = json.load(f)
    (copy / "plans.json").write_text(json.dumps(edit_plans(plans) if edit_plans else plans))
    if checkpoint_bytes is None:
        os.symlink(os.path.join(fold_dir(e2e_workspace), "checkpoint_final.pth"),
                   copy / "fold_0" / "checkpoint_final.pth")
    else:
        (copy / "fold_0" / "checkpoint_final.pth").write_bytes(checkpoint_bytes)
    return str(results), copy


def predict(e2e_workspace, tmp_path, results=None, images=None):
    images = images or os.path.join(e2e_workspace.path("nnUNet_raw"), SPEC.folder_name, "imagesTs")
    run_command(["nnUNetv2_predict", "-i", images, "-o", str(tmp_path / "out"), "-d", DID, "-c", "3d_fullres",
                 "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"],
                {**e2e_workspace.env, **({"nnUNet_results": results} if results else {})}, quiet=True)


def trained_predictor(run_folder):
    """nnU-Net's predictor for fold 0 of ``run_folder``, initialised as nnUNetv2_predict does."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(run_folder), (0,), "checkpoint_final.pth")
    return predictor


def test_predict_refuses_a_runs_plans_patch_the_strides_cannot_serve(e2e_workspace, trained, tmp_path):
    def edit(plans):
        assert plans["configurations"]["3d_fullres"]["patch_size"] == [16, 32, 32]
        plans["configurations"]["3d_fullres"]["patch_size"] = [16, 32, 36]
        return plans

    _, copy = copied_run(e2e_workspace, tmp_path, edit_plans=edit)
    with pytest.raises(ValueError, match=r"Patch size \[16, 32, 36\] is not served.*e\.g\. \[16, 32, 40\]") as error:
        trained_predictor(copy)
    assert "the run's plans.json for nnUNetv2_predict" in str(error.value).replace("\n", "")


def test_predict_from_a_truncated_checkpoint_names_it(e2e_workspace, trained, tmp_path):
    with open(os.path.join(fold_dir(e2e_workspace), "checkpoint_final.pth"), "rb") as f:
        head = f.read(100_000)
    results, copy = copied_run(e2e_workspace, tmp_path, checkpoint_bytes=head)
    with pytest.raises(RuntimeError, match="is not a readable checkpoint") as error:
        predict(e2e_workspace, tmp_path, results)
    assert str(copy / "fold_0" / "checkpoint_final.pth") in str(error.value).replace("\n", "")
    assert str(error.value).count("is not a readable checkpoint") == 1  # nnU-Net's report, then our advice once


def test_predict_with_a_channel_missing_says_which_files(e2e_workspace, trained):
    predictor = trained_predictor(os.path.dirname(fold_dir(e2e_workspace)))
    one_channel = np.zeros((1, *SPEC.shape), dtype=np.float32)  # SPEC has 2 channels
    with pytest.raises(ValueError, match=r"trained on 2 input channel\(s\).* but got 1") as error:
        predictor.predict_single_npy_array(one_channel, {"spacing": list(SPEC.spacing)})
    assert "CASE_0000 to CASE_0001" in str(error.value)


def test_resume_from_a_truncated_checkpoint_names_it_and_keeps_it(e2e_workspace, tmp_path):
    folder = os.path.join(os.path.dirname(fold_dir(e2e_workspace)), "fold_1")
    os.makedirs(folder)
    checkpoint = os.path.join(folder, "checkpoint_latest.pth")
    torch.save({"network_weights": {"w": torch.zeros(1000)}}, tmp_path / "whole.pth")
    truncated = (tmp_path / "whole.pth").read_bytes()[:2000]  # as a kill during a plain torch.save leaves it
    open(checkpoint, "wb").write(truncated)
    with pytest.raises(RuntimeError, match="is not a readable checkpoint") as error:
        run_command(["nnUNetv2_train", DID, "3d_fullres", "1", "-tr", TRAINER, "-device", "cpu", "--c"],
                    e2e_workspace.env, quiet=True)
    message = str(error.value).replace("\n", "")
    assert checkpoint in message and f"mv {checkpoint} {checkpoint}.corrupt" in message
    assert open(checkpoint, "rb").read() == truncated


@pytest.mark.parametrize("when", ["before", "during"])
def test_a_stop_signal_in_the_final_validation_leaves_it_undone(e2e_workspace, trained, tmp_path, monkeypatch, when):
    """SIGUSR1 to the trainer in its final validation (in this process, as ``nnUNetv2_train --val``
    runs it), come while ``checkpoint_final.pth`` was written ("before") or while the network
    predicts a validation case ("during"): it exits with 75, the validation is not taken as done
    (a ``summary.json`` is removed), and its log says so in the line the sweep records as
    ``validation``."""
    from nnunetv2_segresmamba.tools.stopping import IN_VALIDATION, STOPPED_EXIT_CODE, stopped_epoch
    from nnunetv2_segresmamba.trainers import nnUNetTrainerSegResMamba_smoke

    assert threading.current_thread() is threading.main_thread(), "Python's signal handlers run in the main thread"
    results, copy = copied_run(e2e_workspace, tmp_path)
    trainer = planned_trainer(e2e_workspace, monkeypatch, nnUNetTrainerSegResMamba_smoke,
                              {**e2e_workspace.env, "nnUNet_results": results})
    trainer.initialize()
    trainer.load_checkpoint(str(copy / "fold_0" / "checkpoint_final.pth"))
    summary = copy / "fold_0" / "validation" / "summary.json"
    summary.parent.mkdir()
    summary.write_text("{}")  # as a validation stopped after nnU-Net wrote it would leave it
    forward = trainer.network.forward
    predicted = []

    def forward_then_signal(x):
        predicted.append(x.shape)
        os.kill(os.getpid(), signal.SIGUSR1)  # its handler runs at the next Python line: inside the prediction
        return forward(x)

    handlers = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        trainer.install_stop_handlers()
        if when == "before":
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            monkeypatch.setattr(trainer.network, "forward", forward_then_signal)
        with pytest.raises(SystemExit) as stopped:
            trainer.perform_actual_validation(False)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert stopped.value.code == STOPPED_EXIT_CODE
    assert len(predicted) == (1 if when == "during" else 0)  # stopped at the first window
    assert not summary.exists()
    assert stopped_epoch(open(trainer.log_file).read().splitlines()[-1]) == IN_VALIDATION


# nnU-Net's whole flow: 2d and 3d_fullres, find_best_configuration, ensemble, postprocessing

CONFIGURATIONS = ("2d", "3d_fullres")


RESENC_M = "nnUNetTrainerComparisonNnUNet_smoke:nnUNetResEncUNetMPlans"  # nnU-Net ResEnc M, in the sweep


@pytest.fixture(scope="module")
def swept(e2e_workspace, trained):
    """TRAINER's fold 0 in 2d and 3d_fullres with --npz, trained by ``nnunetv2_segresmamba sweep``
    (3d_fullres: the fold of ``trained``, only validated here unless a test did it), then, into
    the same sweep, nnU-Net's trainer on ResEnc M plans in 3d_fullres (planned by nnU-Net's
    ResEnc M planner; it shares the default plans' preprocessed data), each with the test set
    (``--test``: every trainer's ensemble of its folds predicts imagesTs), and the sweep's report.
    Returns the sweep folder."""
    run_command(["nnUNetv2_preprocess", "-d", DID, "-c", "2d", "-np", "2"], e2e_workspace.env, quiet=True)
    run_command(["nnUNetv2_plan_experiment", "-d", DID, "-pl", "nnUNetPlannerResEncM"], e2e_workspace.env, quiet=True)
    sweep_dir = os.path.join(e2e_workspace.root, "sweeps", "configurations")
    for configurations, trainer in ((CONFIGURATIONS, TRAINER), (["3d_fullres"], RESENC_M)):
        run_command(["nnunetv2_segresmamba", "sweep", "-d", DID, "-c", *configurations, "-tr", trainer, "-f", "0",
                     "--device", "cpu", "--sweep-dir", sweep_dir, "--test"], e2e_workspace.env, quiet=True)
    run_command(["nnunetv2_segresmamba", "report", "--sweep-dir", sweep_dir], e2e_workspace.env, quiet=True)
    return sweep_dir


def dice_against_test_labels(e2e_workspace, folder):
    raw = os.path.join(e2e_workspace.path("nnUNet_raw"), SPEC.folder_name)
    dice = evaluate_folder(os.path.join(raw, "labelsTs"), folder, [1, 2], e2e_workspace.env)["foreground_mean"]["Dice"]
    return dice, chance_dice(os.path.join(raw, "labelsTs"), [1, 2])


def test_sweep_trains_2d_and_3d_and_reports_them_side_by_side(e2e_workspace, swept):
    with open(os.path.join(swept, "report", "leaderboard.csv")) as f:
        rows = {row["configuration"]: row for row in csv.DictReader(f) if row["trainer"] == TRAINER}
    assert sorted(rows) == sorted(CONFIGURATIONS) and all(r["folds_done"] == "1" for r in rows.values())
    assert all(0 < float(r["dice_mean"]) <= 1 for r in rows.values())
    md = open(os.path.join(swept, "report", "leaderboard.md")).read()
    side_by_side = md.split("configurations side by side")[1].split("\n## ")[0]
    assert "| trainer | plans | network | Dice 2d | Dice 3d_fullres |" in side_by_side
    row = next(line for line in side_by_side.splitlines() if line.startswith(f"| {TRAINER} |"))
    assert f"{float(rows['2d']['dice_mean']):.4f}" in row and f"{float(rows['3d_fullres']['dice_mean']):.4f}" in row
    checkpoint = load_checkpoint_file(os.path.join(fold_dir(e2e_workspace, configuration="2d"), "checkpoint_final.pth"),
                                      "cpu")
    kwargs = checkpoint["architecture"]["arch_kwargs"]
    assert kwargs["spatial_dims"] == 2 and all(len(s) == 2 for s in kwargs["stage_strides"] + kwargs["block_strides"])


def test_a_sweep_reports_resenc_m_beside_segresmamba(e2e_workspace, swept):
    """One sweep, two plans: SegResMamba on nnU-Net's default plans and nnU-Net's trainer on ResEnc
    M plans, which trains nnU-Net's ResidualEncoderUNet, in one 3d_fullres leaderboard."""
    trainer, plans = RESENC_M.split(":")
    with open(os.path.join(swept, "report", "leaderboard.csv")) as f:
        rows = {(r["trainer"], r["plans"]): r for r in csv.DictReader(f) if r["configuration"] == "3d_fullres"}
    assert set(rows) == {(TRAINER, "nnUNetPlans"), (trainer, plans)}
    assert rows[trainer, plans]["network"] == "nnU-Net ResEnc M" and rows[TRAINER, "nnUNetPlans"]["network"] == \
        "SegResMamba"
    assert all(r["folds_done"] == "1" and 0 < float(r["dice_mean"]) <= 1 for r in rows.values())
    md = open(os.path.join(swept, "report", "leaderboard.md")).read()
    table = md.split(f"## {SPEC.folder_name}, 3d_fullres\n")[1]
    assert f"| {trainer} | {plans} | nnU-Net ResEnc M |" in table
    assert f"| {TRAINER} | nnUNetPlans | SegResMamba |" in table
    run = os.path.join(e2e_workspace.path("nnUNet_results"), SPEC.folder_name, f"{trainer}__{plans}__3d_fullres")
    with open(os.path.join(run, "plans.json")) as f:
        assert json.load(f)["configurations"]["3d_fullres"]["architecture"]["network_class_name"].endswith(
            "ResidualEncoderUNet")
    weights = load_checkpoint_file(os.path.join(run, "fold_0", "checkpoint_final.pth"), "cpu")["network_weights"]
    assert any(".blocks.3." in key for key in weights)  # ResEnc M: 4 residual blocks in its third stage


def test_sweep_predicts_the_test_set_once_and_reports_it_case_by_case(e2e_workspace, swept, tmp_path):
    """Each trainer's ensemble predicted imagesTs once (the second sweep call skipped the first's),
    the report evaluated it beside the cross-validation and compared the two 3d_fullres trainers
    case by case; ``evaluate`` on the same predictions gives the report's numbers."""
    trainer, plans = RESENC_M.split(":")
    keys = [f"{SPEC.folder_name}__{t}__{p}__{c}__test_folds_0" for t, p, c in
            ((TRAINER, "nnUNetPlans", "2d"), (TRAINER, "nnUNetPlans", "3d_fullres"), (trainer, plans, "3d_fullres"))]
    assert sorted(os.listdir(os.path.join(swept, "test"))) == sorted(keys)
    for key in keys:
        assert len(glob.glob(os.path.join(swept, "test", key, "*.nii.gz"))) == SPEC.num_test
        assert open(os.path.join(swept, "logs", f"{key}.log")).read().count("=== ") == 1, "predicted twice"
    with open(os.path.join(swept, "report", "cases.csv")) as f:
        cases = list(csv.DictReader(f))
    assert {(r["configuration"], r["split"]) for r in cases} == {(c, s) for c in CONFIGURATIONS
                                                                for s in ("cross-validation", "test")}
    with open(os.path.join(swept, "report", "paired.csv")) as f:
        paired = [r for r in csv.DictReader(f) if r["configuration"] == "3d_fullres" and r["kind"] == "reference"]
    assert {r["split"] for r in paired} == {"cross-validation", "test"} and len(paired) == 6  # 3 metrics x 2 splits
    assert all(r["cases"] == "2" and 0 < float(r["p_holm"]) <= 1 for r in paired)
    md = open(os.path.join(swept, "report", "statistics.md")).read()
    assert f"## {SPEC.folder_name}, 3d_fullres, test" in md and "### Ranking" in md

    out = tmp_path / "evaluated"
    run_command(["nnunetv2_segresmamba", "evaluate", os.path.join(e2e_workspace.path("nnUNet_raw"), SPEC.folder_name,
                 "labelsTs"), os.path.join(swept, "test", keys[1]), "-o", str(out)], e2e_workspace.env, quiet=True)
    with open(out / "cases.csv") as f:
        evaluated = {(r["case"], r["class"]): r for r in csv.DictReader(f)}
    reported = {(r["case"], r["class"]): r for r in cases
                if (r["trainer"], r["configuration"], r["split"]) == (TRAINER, "3d_fullres", "test")}
    assert sorted(evaluated) == sorted(reported) and len(evaluated) == SPEC.num_test * SPEC.num_classes
    for key, row in evaluated.items():
        assert [float(row[m]) for m in ("dice", "hd95_mm", "nsd")] == pytest.approx(
            [float(reported[key][m]) for m in ("dice", "hd95_mm", "nsd")])


def assert_predicts_2d(e2e_workspace, trainer: str) -> None:
    """``trainer``'s 2d fold 0 predicts the 3D test images slice by slice (nnU-Net's predictor, in
    this process, no TTA; nnUNetv2_predict of a 2d run: test_find_best_configuration...)."""
    segmentations = predict_in_process(e2e_workspace, trainer, "2d")
    assert len(segmentations) == SPEC.num_test and all(s.shape == tuple(SPEC.shape) for s in segmentations)


def test_umamba_enc_trains_and_predicts_2d(e2e_workspace, swept):
    """The 2D U-Mamba Enc (its skip-free last decoder stage, Mamba layers on every other stage)
    through the CLI on the 2d configuration that ``swept`` preprocessed."""
    trainer = "nnUNetTrainerUMambaEnc_smoke"
    run_command(["nnUNetv2_train", DID, "2d", "0", "-tr", trainer, "-device", "cpu"], e2e_workspace.env, quiet=True)
    weights = load_checkpoint_file(os.path.join(fold_dir(e2e_workspace, trainer, "2d"), "checkpoint_final.pth"),
                                   "cpu")["network_weights"]
    stages = {int(k.split(".")[2]) for k in weights if k.startswith("encoder.stages.")}
    with_mamba = {int(k.split(".")[2]) for k in weights if k.startswith("encoder.mamba_layers.")}
    assert with_mamba == set(range(len(stages) - 1, -1, -2))  # every other stage, the deepest included
    assert_predicts_2d(e2e_workspace, trainer)


def test_swin_umamba_trains_from_vmamba_weights_and_predicts_without_them(e2e_workspace, swept, tmp_path,
                                                                          monkeypatch):
    """Swin-UMamba through the CLI on the 2d configuration: VMamba's ImageNet weights (a file laid
    out as VMamba's, named by $nnUNet_vmamba_weights) are loaded when training starts, the encoder
    stays frozen through the smoke run's one epoch, and prediction needs the trained checkpoint only."""
    from nnunetv2_segresmamba.networks.vmamba_weights import VMAMBA_WEIGHTS_VAR
    from tests.test_swin_umamba import vmamba_checkpoint

    trainer, weights = "nnUNetTrainerSwinUMamba_smoke", str(tmp_path / "vmamba_tiny.pth")
    model = vmamba_checkpoint(weights)
    monkeypatch.delenv(VMAMBA_WEIGHTS_VAR, raising=False)
    run_command(["nnUNetv2_train", DID, "2d", "0", "-tr", trainer, "-device", "cpu"],
                {**e2e_workspace.env, VMAMBA_WEIGHTS_VAR: weights}, quiet=True)
    folder = fold_dir(e2e_workspace, trainer, "2d")
    log = "".join(open(path).read() for path in glob.glob(os.path.join(folder, "training_log_*.txt")))
    assert "VMamba ImageNet weights: 204 of the encoder's 208 tensors" in log
    trained = load_checkpoint_file(os.path.join(folder, "checkpoint_final.pth"), "cpu")["network_weights"]
    assert torch.equal(trained["vssm_encoder.layers.2.blocks.8.self_attention.A_logs"],
                       model["layers.2.blocks.8.self_attention.A_logs"])  # loaded, then frozen
    assert torch.equal(trained["vssm_encoder.downsamples.0.reduction.weight"],
                       model["layers.0.downsample.reduction.weight"])
    assert_predicts_2d(e2e_workspace, trainer)  # without $nnUNet_vmamba_weights (deleted above)


@pytest.mark.parametrize("trainer", ["nnUNetTrainerSwinUMambaScratch_smoke", "nnUNetTrainerSwinUMambaDScratch_smoke"])
def test_swin_umamba_trains_from_scratch_and_predicts_2d(e2e_workspace, swept, trainer):
    """Swin-UMamba and Swin-UMamba-dagger (its VSS-block decoder, deep supervision at 1/4 to 1/16)
    from scratch: they read no ImageNet file."""
    run_command(["nnUNetv2_train", DID, "2d", "0", "-tr", trainer, "-device", "cpu"], e2e_workspace.env, quiet=True)
    assert_predicts_2d(e2e_workspace, trainer)


def test_find_best_configuration_then_its_inference_instructions(e2e_workspace, swept, predicted, tmp_path):
    """find_best_configuration over 2d and 3d_fullres, one prediction per configuration (with
    probabilities, as an ensemble needs), the ensemble it evaluated, and the ensembling and
    postprocessing commands of its inference_instructions.txt, with its placeholders filled in."""
    run_command(["nnUNetv2_find_best_configuration", DID, "-c", *CONFIGURATIONS, "-tr", TRAINER, "-f", "0",
                 "-np", "1"], e2e_workspace.env, quiet=True)
    dataset_results = os.path.join(e2e_workspace.path("nnUNet_results"), SPEC.folder_name)
    info = json.load(open(os.path.join(dataset_results, "inference_information.json")))["best_model_or_ensemble"]
    models = [f"{TRAINER}__nnUNetPlans__{c}" for c in CONFIGURATIONS]
    ensemble = os.path.join(dataset_results, "ensembles", f"ensemble___{models[0]}___{models[1]}___0")
    assert os.path.isfile(os.path.join(ensemble, "summary.json")), "the ensemble was not evaluated"
    for promised in (info["postprocessing_file"], info["some_plans_file"]):
        assert os.path.isfile(promised), promised
    selected = [m["configuration"] for m in info["selected_model_or_models"]]
    assert set(selected) <= set(CONFIGURATIONS) and {m["trainer"] for m in info["selected_model_or_models"]} == {
        TRAINER}

    images = os.path.join(e2e_workspace.path("nnUNet_raw"), SPEC.folder_name, "imagesTs")
    predictions = {"2d": str(tmp_path / "2d"), "3d_fullres": predicted}  # 3d_fullres: predicted by the fixture
    run_command(["nnUNetv2_predict", "-i", images, "-o", predictions["2d"], "-d", DID, "-c", "2d", "-f", "0", "-tr",
                 TRAINER, "--save_probabilities", *CPU_PREDICT], e2e_workspace.env, quiet=True)
    for out in predictions.values():
        assert len(glob.glob(os.path.join(out, "*.nii.gz"))) == len(glob.glob(os.path.join(out, "*.npz"))) \
            == SPEC.num_test

    instructions = open(os.path.join(dataset_results, "inference_instructions.txt")).read().splitlines()
    commands = [line.split() for line in instructions if line.startswith("nnUNetv2_")]
    placeholders = {"INPUT_FOLDER": images, "OUTPUT_FOLDER": str(tmp_path / "final"),
                    "OUTPUT_FOLDER_PP": str(tmp_path / "final_pp")}
    for j, configuration in enumerate(selected, start=1):
        placeholders[f"OUTPUT_FOLDER_MODEL_{j}"] = predictions[configuration]
    if len(selected) == 1:  # the single model's predictions are the final ones
        placeholders["OUTPUT_FOLDER"] = predictions[selected[0]]
    for command in commands:
        if command[0] == "nnUNetv2_predict":  # predicted above, per configuration; the same command
            assert command[command.index("-c") + 1] in selected and command[command.index("-tr") + 1] == TRAINER
            continue
        run_command([placeholders.get(word, word) for word in command], e2e_workspace.env, quiet=True)
    assert [c[0] for c in commands if c[0] != "nnUNetv2_predict"] == (
        ["nnUNetv2_ensemble"] if len(selected) == 2 else []) + ["nnUNetv2_apply_postprocessing"]
    if len(selected) == 1:  # a single model won: the ensemble it evaluated still runs
        ensembled = str(tmp_path / "ensemble")
        run_command(["nnUNetv2_ensemble", "-i", *predictions.values(), "-o", ensembled, "-np", "1"], e2e_workspace.env,
                    quiet=True)
    else:
        ensembled = placeholders["OUTPUT_FOLDER"]
    for folder in (ensembled, placeholders["OUTPUT_FOLDER_PP"]):
        assert len(glob.glob(os.path.join(folder, "*.nii.gz"))) == SPEC.num_test, folder
        dice, chance = dice_against_test_labels(e2e_workspace, folder)
        print(f"{folder}: mean Dice {dice:.3f}, chance {chance:.3f}")
        assert dice > chance + 0.1, f"{folder}: Dice {dice:.3f} is not above chance ({chance:.3f})"
