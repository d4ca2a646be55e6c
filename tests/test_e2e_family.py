"""End to end through the stock nnU-Net CLI on the dataset of test_e2e.py: a training of each
baseline's smoke trainer (the paper's and U-Mamba's; ResEnc M in test_e2e.py's sweep) and its
prediction by nnU-Net's predictor in this process, a training of each ablation's, fine-tuning one
of them on a dataset planned otherwise (``-pretrained_weights`` and nnU-Net's move of the plans),
and the cascade, 3d_lowres then 3d_cascade_fullres, on plans given a lowres configuration by
``nnunetv2_segresmamba add-cascade``. A module of its own so that it runs beside test_e2e.py
under pytest-xdist."""

import io
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from nnunetv2_segresmamba.tools.checkpoints import load_checkpoint_file
from nnunetv2_segresmamba.tools.pipeline import run_command
from nnunetv2_segresmamba.tools.synthetic import SyntheticSpec, make_dataset
from nnunetv2_segresmamba.trainers.tracking import CO2_COUNTRY_ENV
from tests.workspaces import E2E as SPEC
from tests.workspaces import drop_checkpoints, fold_dir, predict_in_process

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
def test_baseline_trains_through_the_cli_and_predicts(e2e_workspace, trainer):
    """Trains and validates through the CLI, then predicts without test-time mirroring (8 forward
    passes a window; nnUNetv2_predict with mirroring runs in test_e2e.py)."""
    patch, epochs = BASELINES[trainer]
    folder = train_smoke(e2e_workspace, trainer, epochs)
    with open(os.path.join(folder, "plans.json")) as f:
        assert json.load(f)["configurations"]["3d_fullres"]["patch_size"] == patch

    assert_predicts(e2e_workspace, trainer)


def assert_predicts(e2e_workspace, trainer):
    """``trainer``'s fold 0 predicts the test images (nnU-Net's predictor, in this process)."""
    segmentations = predict_in_process(e2e_workspace, trainer)
    assert len(segmentations) == SPEC.num_test
    assert all(s.shape == tuple(SPEC.shape) and set(s.ravel().tolist()) <= {0, 1, 2} for s in segmentations)


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


# fine-tuning on a dataset whose plans pool otherwise

# 1 mm isotropic (SPEC: (2, 1, 1) mm), so nnU-Net pools its first stage (2, 2, 2) with 3^3 kernels
# where SPEC's pools (1, 2, 2) with 1 x 3 x 3 kernels; 1 class (SPEC: 2); SPEC's 2 channels. Two
# cases, too few for 5 folds: trained on fold "all"
OTHER_PLANS = SyntheticSpec(dataset_id=994, name="OtherPlans", num_train=2, num_test=0, shape=(32, 32, 32),
                            spacing=(1.0, 1.0, 1.0), num_classes=1, num_channels=2, seed=2)
FINE_TUNED = "nnUNetTrainerUMambaBot_smoke"  # a baseline above; 3 deep-supervision heads, plans-built


def test_fine_tuning_across_plans_runs_the_commands_the_refusal_gives(e2e_workspace):
    """``-pretrained_weights`` from FINE_TUNED's SPEC fold into OTHER_PLANS on its own plans is
    refused with the misshapen tensors (no tensor dump) and nnU-Net's commands; those commands, run
    as given (with CPU options), move SPEC's plans over, preprocess and fine-tune: the run has
    SPEC's architecture, OTHER_PLANS' 2 outputs, and the other tensors near the checkpoint's."""
    pretrained = os.path.join(fold_dir(e2e_workspace, FINE_TUNED), "checkpoint_final.pth")
    if not os.path.isfile(pretrained):  # the baseline run above, when this test runs alone
        train_smoke(e2e_workspace, FINE_TUNED, epochs=1)
    make_dataset(e2e_workspace.path("nnUNet_raw"), OTHER_PLANS)
    did = str(OTHER_PLANS.dataset_id)
    run_command(["nnUNetv2_plan_and_preprocess", "-d", did, "-c", "3d_fullres", "-np", "1"], e2e_workspace.env,
                quiet=True)
    train = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_train")
    refused = subprocess.run([train, did, "3d_fullres", "all", "-tr", FINE_TUNED, "-device", "cpu",
                              "-pretrained_weights", pretrained], env={**os.environ, **e2e_workspace.env},
                             capture_output=True, text=True)
    assert refused.returncode != 0
    assert "ValueError" in refused.stderr and "Tensors of another shape" in refused.stderr, refused.stderr[-3000:]
    assert "tensor([" not in refused.stderr + refused.stdout, "a tensor was printed"
    assert re.search(r"The plans differ: .*kernel_sizes", refused.stderr)
    commands = re.findall(r"^ +(nnUNetv2_\S+ .*)$", refused.stderr, re.M)
    assert [c.split()[0] for c in commands] == [
        "nnUNetv2_move_plans_between_datasets", "nnUNetv2_preprocess", "nnUNetv2_train"], refused.stderr[-3000:]
    cpu = {"nnUNetv2_preprocess": ["-np", "1"], "nnUNetv2_train": ["-device", "cpu"]}
    for command in commands:
        args = shlex.split(command)
        run_command(args + cpu.get(args[0], []), e2e_workspace.env, quiet=True)

    moved = f"nnUNetPlans_from{SPEC.dataset_id}"
    run = os.path.join(e2e_workspace.path("nnUNet_results"), OTHER_PLANS.folder_name,
                       f"{FINE_TUNED}__{moved}__3d_fullres")
    with open(os.path.join(run, "plans.json")) as f, \
            open(os.path.join(os.path.dirname(fold_dir(e2e_workspace, FINE_TUNED)), "plans.json")) as g:
        assert json.load(f)["configurations"]["3d_fullres"]["architecture"] == \
            json.load(g)["configurations"]["3d_fullres"]["architecture"]
    source = load_checkpoint_file(pretrained, "cpu")["network_weights"]
    tuned = load_checkpoint_file(os.path.join(run, "fold_all", "checkpoint_final.pth"), "cpu")["network_weights"]
    assert source.keys() == tuned.keys()
    rest = [name for name in tuned if not name.startswith("decoder.seg_layers.")]
    for name in set(tuned) - set(rest):  # OTHER_PLANS' 2 outputs, SPEC's 3: not transferred
        assert tuned[name].shape[0] == 2 and source[name].shape[0] == 3, name
    # 2 SGD steps (lr 1e-2, gradients clipped to norm 12) move the whole network by well under 1 in
    # norm; a network not initialised from the checkpoint would be its own norm away
    moved = sum((tuned[n] - source[n]).float().pow(2).sum() for n in rest).sqrt()
    norm = sum(source[n].float().pow(2).sum() for n in rest).sqrt()
    print(f"fine-tuning moved the transferred tensors by {moved:.3f}, {moved / norm:.4f} of their norm")
    assert moved / norm < 0.05, "not the checkpoint's weights"


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


def test_cascade_trains_through_the_cli_and_its_second_stage_predicts_from_the_first(e2e_workspace, cascade):
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

    lowres = predict_in_process(e2e_workspace, CASCADE_TRAINER, "3d_lowres", "all")
    predictions = predict_in_process(e2e_workspace, CASCADE_TRAINER, "3d_cascade_fullres", previous_stage=lowres)
    assert len(predictions) == SPEC.num_test and all(p.shape == tuple(SPEC.shape) for p in predictions)
    for run in (lowres_run, os.path.dirname(cascade_fold)):  # used by no other test: free their disk now
        drop_checkpoints(run)
