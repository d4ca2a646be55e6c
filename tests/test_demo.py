"""The demo's progress lines, from nnUNetv2_train's log as nnU-Net 2.8 prints it."""

from nnunetv2_segresmamba.tools.demo import NEXT_STEPS, EpochProgress, num_epochs_of

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
    from nnunetv2_segresmamba.registry import member
    from nnunetv2_segresmamba.tools.demo import DEMO_TRAINER

    demo = getattr(trainers, DEMO_TRAINER)
    assert issubclass(demo, trainers.nnUNetTrainerSegResMamba) and demo.seed is not None
    assert member(DEMO_TRAINER).network == "SegResMamba"
