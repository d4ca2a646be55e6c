"""The demo's progress lines, from nnUNetv2_train's log as nnU-Net 2.8 prints it."""

import os
import shlex
import subprocess

from nnunetv2_segresmamba.tools.demo import NEXT_STEPS, EpochProgress, demo_workspace, keep_working, num_epochs_of
from nnunetv2_segresmamba.tools.synthetic import SyntheticSpec, make_dataset

LOG = """\
2026-11-29 02:26:25.773551: Epoch 0
2026-11-29 02:26:25.774000: Current learning rate: 0.001
2026-11-29 02:26:56.107689: train_loss -0.0821
2026-11-29 02:26:56.109115: val_loss -0.2178
2026-11-29 02:26:56.109211: Pseudo dice [np.float32(0.1005), np.float32(0.3666)]
2026-11-29 02:26:56.109280: Epoch time: 30.34 s
2026-11-29 02:26:56.200000: Yayy! New best EMA pseudo Dice: 0.2335
2026-11-29 02:27:09.592317: Epoch 1
2026-11-29 02:27:39.651766: train_loss -0.3296
2026-11-29 02:27:39.654515: val_loss -0.453
2026-11-29 02:27:39.654642: Pseudo dice [0.2438, nan]
2026-11-29 02:27:39.654734: Epoch time: 20.0 s
"""


def test_one_line_per_epoch_with_losses_dice_and_time_left():
    lines = []
    progress = EpochProgress(3, lines.append)
    for line in LOG.splitlines(keepends=True):
        progress(line)
    assert lines == [
        "      epoch 1/3, train loss -0.082, validation loss -0.218, pseudo-Dice per class 0.10 0.37, 30 s; "
        "about 61 s of training left",
        "      epoch 2/3, train loss -0.330, validation loss -0.453, pseudo-Dice per class 0.24 nan, 20 s; "
        "about 25 s of training left",
    ]


def test_last_epoch_and_unknown_epoch_count():
    lines = []
    progress = EpochProgress(None, lines.append)
    for line in LOG.splitlines()[:6]:
        progress(line)
    assert lines == ["      epoch 1, train loss -0.082, validation loss -0.218, pseudo-Dice per class 0.10 0.37, 30 s"]
    last = []
    progress = EpochProgress(1, last.append)
    for line in LOG.splitlines()[:6]:
        progress(line)
    assert last[0].endswith("; final validation next")


def test_epoch_counts_and_next_steps():
    assert num_epochs_of("nnUNetTrainerSegResMamba_smoke") == 3
    assert num_epochs_of("nnUNetTrainerNotOurs") is None
    assert "-tr nnUNetTrainerSegResMamba" in NEXT_STEPS and "nnUNetv2_plan_and_preprocess" in NEXT_STEPS


def test_the_demo_trains_a_seeded_segresmamba():
    from nnunetv2_segresmamba import trainers
    from nnunetv2_segresmamba.tools.demo import DEMO_TRAINER

    demo = getattr(trainers, DEMO_TRAINER)
    assert issubclass(demo, trainers.nnUNetTrainerSegResMamba) and demo.seed is not None
    assert demo.family_member().network == "SegResMamba"


def test_the_demo_ends_with_the_exports_of_its_own_folders(tmp_path, monkeypatch):
    """The printed exports, run by a shell, set the three nnU-Net variables to the demo's folders
    (absolute, a space in the path quoted); the commands after them name the demo's data."""
    monkeypatch.chdir(tmp_path)
    ws, spec = demo_workspace("my demo"), SyntheticSpec(dataset_id=7, num_train=2, num_test=1, shape=(16, 16, 16))
    text = keep_working(ws, spec, "nnUNetTrainerSegResMamba_demo", "cpu")
    lines = [line.strip() for line in text.splitlines()[1:]]
    exports, commands = lines[:3], lines[3:]
    assert all(line.startswith("export nnUNet_") for line in exports)
    shell = subprocess.run(["bash", "-c", "; ".join(exports) + '; printf "%s\\n" "$nnUNet_raw" '
                            '"$nnUNet_preprocessed" "$nnUNet_results"'], capture_output=True, text=True, check=True)
    demo_dir = tmp_path / "my demo"
    assert shell.stdout.splitlines() == [str(demo_dir / n) for n in ("nnUNet_raw", "nnUNet_preprocessed",
                                                                        "nnUNet_results")]
    raw = make_dataset(str(demo_dir / "nnUNet_raw"), spec)  # where run_demo writes its dataset
    train, predict = (shlex.split(c.split("#")[0]) for c in commands)
    assert train[:2] == ["nnUNetv2_train", "7"] and train[-2:] == ["-device", "cpu"]
    assert predict[predict.index("-i") + 1] == os.path.join(raw, "imagesTs")
    assert os.listdir(os.path.join(raw, "imagesTs"))
