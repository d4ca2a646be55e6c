"""The sweep report on a real nnUNet_results tree: 2 trainers x 3 folds, SegMamba's fold 2 trained but not
validated, so missing."""

import csv
import json
import math
import statistics

import pytest

from nnunetv2_segresmamba.sweeps.jobs import FoldJob, write_plan
from nnunetv2_segresmamba.sweeps.report import build_report
from tests.workspaces import record_member

DATASET, CONFIGURATION = "Dataset991_E2E", "3d_fullres"
OURS, THEIRS = "nnUNetTrainerSegResMamba", "nnUNetTrainerSegMamba"
# per fold: Dice of label 1 and label 2
CLASS_DICE = {OURS: [(0.81, 0.77), (0.86, 0.80), (0.90, 0.84)], THEIRS: [(0.74, 0.70), (0.78, 0.72)]}
EPOCH_TIMES = {OURS: [[10.0, 12.5, 11.0], [13.0, 11.5, 12.0], [14.0, 10.5, 12.25]],
               THEIRS: [[20.0, 22.0], [21.0, 23.5]]}
MEMORY = {OURS: [1000.0, 1200.0, 1100.0], THEIRS: [3000.0, 3100.0]}
ENERGY = {OURS: [(0.10, 0.05), (0.12, 0.06), (0.11, 0.055)], THEIRS: [(0.30, 0.15), (0.31, 0.155)]}
PNG = b"\x89PNG\r\n\x1a\n"
PER_CASE_FILES = ("cases.csv", "paired.csv", "ranking.csv", "statistics.md")  # no validation files: no figures


def mean(values):
    return sum(values) / len(values)


def sample_std(values):
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def foreground(trainer):
    return [mean(d) for d in CLASS_DICE[trainer]]


def write_summary(fold_dir, class_dice):
    """nnU-Net's validation/summary.json: per label means, their foreground mean, and the cases."""
    metrics = {str(label): {"Dice": d, "IoU": d / (2 - d), "FN": 9.0, "FP": 11.0, "TN": 5000.0, "TP": 100.0,
                            "n_pred": 111.0, "n_ref": 109.0} for label, d in enumerate(class_dice, start=1)}
    summary = {
        "foreground_mean": {k: mean([m[k] for m in metrics.values()]) for k in metrics["1"]},
        "mean": metrics,
        "metric_per_case": [{"metrics": metrics, "prediction_file": str(fold_dir / "validation" / "case_0.nii.gz"),
                             "reference_file": "/data/gt/case_0.nii.gz"}],
    }
    (fold_dir / "validation").mkdir(parents=True)
    (fold_dir / "validation" / "summary.json").write_text(json.dumps(summary, indent=4))


def write_run_metrics(fold_dir, times, memory, energy, first_epoch):
    record = {"epochs": len(times), "epoch_time_median_s": statistics.median(times), "epoch_times_s": times,
              "peak_gpu_memory_mib": memory, "first_epoch_this_process": first_epoch,
              "energy": None if energy is None else {"energy_kwh": energy[0], "co2_kg": energy[1],
                                                     "tracked_s": 40.0, "country": "DEU", "region": None}}
    (fold_dir / "run_metrics.json").write_text(json.dumps(record, indent=2))


def make_sweep(tmp_path, gpu=True, missing=True):
    """A plan of 2 trainers x 3 folds and their fold folders; on GPU, SegResMamba's fold 1 was resumed."""
    results, sweep = tmp_path / "nnUNet_results", tmp_path / "sweep"
    jobs = [FoldJob(DATASET, CONFIGURATION, t, fold) for t in (OURS, THEIRS) for fold in range(3)]
    write_plan(sweep, jobs)
    for job in jobs:
        fold_dir = job.fold_dir(results)
        fold_dir.mkdir(parents=True)
        (fold_dir / "checkpoint_final.pth").write_bytes(b"")
        record_member(fold_dir, job.trainer, job.plans)
        if job.fold >= len(CLASS_DICE[job.trainer]):
            if missing:
                continue  # trained, but validation never ran
            class_dice, times, memory, energy = (0.75, 0.71), [21.5], 3050.0, (0.3, 0.15)
        else:
            i = job.fold
            class_dice, times = CLASS_DICE[job.trainer][i], EPOCH_TIMES[job.trainer][i]
            memory, energy = MEMORY[job.trainer][i], ENERGY[job.trainer][i]
        write_summary(fold_dir, class_dice)
        resumed = gpu and job.trainer == OURS and job.fold == 1
        write_run_metrics(fold_dir, times, memory if gpu else None, energy, 5 if resumed else 0)
    return sweep, results


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def leaderboard(out_dir):
    return {row["trainer"]: row for row in read_csv(out_dir / "leaderboard.csv")}


def test_leaderboard_values_and_missing_fold_left_empty(tmp_path):
    sweep, results = make_sweep(tmp_path)
    written = build_report(sweep, results)
    out = sweep / "report"
    assert {p.name for p in written} == {"folds.csv", "leaderboard.csv", "leaderboard.md", "dice_boxplot.png",
                                         "dice_vs_memory.png", *PER_CASE_FILES}
    assert [r["trainer"] for r in read_csv(out / "leaderboard.csv")] == [OURS, THEIRS]
    ours, theirs = leaderboard(out)[OURS], leaderboard(out)[THEIRS]

    assert (ours["network"], ours["folds_done"], ours["folds_expected"], ours["missing_folds"], ours["complete"]) == (
        "SegResMamba", "3", "3", "", "True")
    assert float(ours["dice_mean"]) == pytest.approx(mean(foreground(OURS)))
    assert float(ours["dice_std"]) == pytest.approx(sample_std(foreground(OURS)))
    for label in (1, 2):
        per_fold = [d[label - 1] for d in CLASS_DICE[OURS]]
        assert float(ours[f"dice_{label}_mean"]) == pytest.approx(mean(per_fold))
        assert float(ours[f"dice_{label}_std"]) == pytest.approx(sample_std(per_fold))
    pooled = sorted(t for times in EPOCH_TIMES[OURS] for t in times)
    assert float(ours["epoch_time_s"]) == pytest.approx(pooled[len(pooled) // 2])
    assert float(ours["peak_gpu_memory_mib"]) == 1200.0
    assert float(ours["energy_kwh"]) == pytest.approx(sum(e[0] for e in ENERGY[OURS]))
    assert float(ours["co2_kg"]) == pytest.approx(sum(e[1] for e in ENERGY[OURS]))
    assert ours["energy_partial"] == "True"  # fold 1 was resumed: its energy covers the last process only

    assert (theirs["folds_done"], theirs["folds_expected"], theirs["missing_folds"], theirs["complete"]) == (
        "2", "3", "2", "False")
    assert [theirs[c] for c in ("dice_mean", "dice_std", "dice_1_mean", "dice_1_std", "dice_2_mean")] == [""] * 5
    assert float(theirs["peak_gpu_memory_mib"]) == 3100.0
    assert theirs["energy_partial"] == "True"  # fold 2 is missing from the sum


def test_folds_csv_has_every_planned_job(tmp_path):
    sweep, results = make_sweep(tmp_path)
    build_report(sweep, results)
    rows = {(r["trainer"], int(r["fold"])): r for r in read_csv(sweep / "report" / "folds.csv")}
    assert len(rows) == 6
    assert [k for k, r in rows.items() if r["state"] == "missing"] == [(THEIRS, 2)]
    missing = rows[THEIRS, 2]
    assert missing["dice"] == "" and missing["dice_1"] == ""
    assert missing["fold_dir"] == str(results / DATASET / f"{THEIRS}__nnUNetPlans__{CONFIGURATION}" / "fold_2")
    done = rows[OURS, 2]
    assert float(done["dice"]) == pytest.approx(foreground(OURS)[2])
    assert (float(done["dice_1"]), float(done["dice_2"])) == CLASS_DICE[OURS][2]
    assert float(done["epoch_time_s"]) == 12.25
    assert (rows[OURS, 1]["energy_partial"], done["energy_partial"]) == ("True", "False")


def test_markdown_names_the_missing_fold_and_prints_no_mean_for_it(tmp_path):
    sweep, results = make_sweep(tmp_path)
    build_report(sweep, results)
    md = (sweep / "report" / "leaderboard.md").read_text()
    theirs_row = next(line for line in md.splitlines() if line.startswith(f"| {THEIRS} |"))
    assert "incomplete: 2/3 folds, missing 2" in theirs_row
    assert "±" not in theirs_row and f"{mean(foreground(THEIRS)):.4f}" not in theirs_row
    ours_row = next(line for line in md.splitlines() if line.startswith(f"| {OURS} |"))
    assert f"{mean(foreground(OURS)):.4f} ± {sample_std(foreground(OURS)):.4f}" in ours_row
    missing_section = md.split("## Missing folds")[1]
    fold_dir = results / DATASET / f"{THEIRS}__nnUNetPlans__{CONFIGURATION}" / "fold_2"
    assert f"{THEIRS} (nnUNetPlans) fold 2 (trained, not validated): `{fold_dir}`" in missing_section
    assert f"{OURS} fold" not in missing_section


def test_allow_incomplete_averages_the_folds_present_and_flags_them(tmp_path):
    sweep, results = make_sweep(tmp_path)
    out = tmp_path / "elsewhere"
    build_report(sweep, results, out_dir=out, allow_incomplete=True)
    theirs = leaderboard(out)[THEIRS]
    assert theirs["complete"] == "False" and theirs["missing_folds"] == "2"
    assert float(theirs["dice_mean"]) == pytest.approx(mean(foreground(THEIRS)))
    assert float(theirs["dice_std"]) == pytest.approx(sample_std(foreground(THEIRS)))
    assert float(theirs["dice_2_mean"]) == pytest.approx(mean([d[1] for d in CLASS_DICE[THEIRS]]))
    md = (out / "leaderboard.md").read_text()
    assert f"{mean(foreground(THEIRS)):.4f} ± {sample_std(foreground(THEIRS)):.4f} (incomplete)" in md
    assert "average only the folds present" in md
    assert not (sweep / "report").exists()


def test_plots_are_png_files(tmp_path):
    sweep, results = make_sweep(tmp_path)
    written = build_report(sweep, results)
    plots = [p for p in written if p.suffix == ".png"]
    assert sorted(p.name for p in plots) == ["dice_boxplot.png", "dice_vs_memory.png"]
    for p in plots:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 1000


def test_memory_plot_skipped_without_gpu_memory(tmp_path):
    sweep, results = make_sweep(tmp_path / "gpu")
    build_report(sweep, results, out_dir=tmp_path / "report")
    assert (tmp_path / "report" / "dice_vs_memory.png").exists()
    sweep, results = make_sweep(tmp_path / "cpu", gpu=False, missing=False)
    written = build_report(sweep, results, out_dir=tmp_path / "report")  # the same folder: no stale figure
    assert "dice_vs_memory.png" not in {p.name for p in written}
    assert not (tmp_path / "report" / "dice_vs_memory.png").exists()
    assert (tmp_path / "report" / "dice_boxplot.png").read_bytes().startswith(PNG)
    md = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "`dice_vs_memory.png` skipped: no fold recorded peak GPU memory" in md
    assert "None: every planned fold is done." in md
    rows = leaderboard(tmp_path / "report")
    assert all(r["complete"] == "True" and r["peak_gpu_memory_mib"] == "" for r in rows.values())
    assert rows[OURS]["energy_partial"] == "False"  # every fold recorded energy and none was resumed
    assert float(rows[THEIRS]["dice_mean"]) == pytest.approx(mean(foreground(THEIRS) + [0.73]))


@pytest.mark.parametrize("plan", [[], None])
def test_an_empty_or_missing_plan_says_to_run_the_sweep(tmp_path, plan):
    if plan is not None:
        write_plan(tmp_path / "sweep", plan)
    with pytest.raises(ValueError, match="run `nnunetv2_segresmamba sweep` first"):
        build_report(tmp_path / "sweep", tmp_path / "nnUNet_results")


def report_of_done_folds(tmp_path, class_dice: dict[FoldJob, tuple[float, float]]) -> str:
    """The leaderboard.md of a sweep of these jobs, every one trained and validated with ``class_dice``."""
    results, sweep = tmp_path / "nnUNet_results", tmp_path / "sweep"
    write_plan(sweep, list(class_dice))
    for job, dice in class_dice.items():
        job.fold_dir(results).mkdir(parents=True)
        (job.fold_dir(results) / "checkpoint_final.pth").write_bytes(b"")
        record_member(job.fold_dir(results), job.trainer, job.plans)
        write_summary(job.fold_dir(results), dice)
    build_report(sweep, results)
    return (sweep / "report" / "leaderboard.md").read_text()


def test_configurations_side_by_side(tmp_path):
    """A sweep of 2d and 3d_fullres: one row per trainer, one Dice column per configuration."""
    md = report_of_done_folds(tmp_path, {FoldJob(DATASET, "2d", OURS, 0): (0.70, 0.60),
                                         FoldJob(DATASET, "3d_fullres", OURS, 0): (0.80, 0.90),
                                         FoldJob(DATASET, "3d_fullres", THEIRS, 0): (0.50, 0.40)})
    table = md.split(f"## {DATASET}: configurations side by side")[1].split("\n## ")[0]
    assert "| trainer | plans | network | Dice 2d | Dice 3d_fullres |" in table
    assert f"| {OURS} | nnUNetPlans | SegResMamba | 0.6500 | 0.8500 |" in table
    assert f"| {THEIRS} | nnUNetPlans | SegMamba | - | 0.4500 |" in table
    assert f"## {DATASET}, 2d\n" in md and f"## {DATASET}, 3d_fullres\n" in md


def test_trainers_on_other_plans_share_the_configurations_table(tmp_path):
    """SegResMamba on the default plans beside nnU-Net on ResEnc M and L plans: one leaderboard,
    the plans in a column, nnU-Net's rows named by their preset."""
    nnunet = "nnUNetTrainerComparisonNnUNet"
    dice = {(OURS, "nnUNetPlans"): (0.80, 0.90), (nnunet, "nnUNetResEncUNetMPlans"): (0.70, 0.80),
            (nnunet, "nnUNetResEncUNetLPlans"): (0.90, 0.90), (OURS, "nnUNetResEncUNetLPlans"): (0.60, 0.60),
            (nnunet, "nnUNetResEncUNetPlans_24G"): (0.50, 0.50)}
    md = report_of_done_folds(tmp_path, {FoldJob(DATASET, CONFIGURATION, trainer, 0, plans=plans): d
                                         for (trainer, plans), d in dice.items()})
    table = md.split(f"## {DATASET}, {CONFIGURATION}\n")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| nnUNet")]
    assert [row.split(" | ")[:3] for row in rows] == [  # ranked by Dice; plans no member names are said
        [f"| {nnunet}", "nnUNetResEncUNetLPlans", "nnU-Net ResEnc L"], [f"| {OURS}", "nnUNetPlans", "SegResMamba"],
        [f"| {nnunet}", "nnUNetResEncUNetMPlans", "nnU-Net ResEnc M"],
        [f"| {OURS}", "nnUNetResEncUNetLPlans", "SegResMamba (nnUNetResEncUNetLPlans)"],
        [f"| {nnunet}", "nnUNetResEncUNetPlans_24G", "nnU-Net (nnUNetResEncUNetPlans_24G)"]]
    with open(tmp_path / "sweep" / "report" / "leaderboard.csv") as f:
        assert {(r["trainer"], r["plans"]) for r in csv.DictReader(f)} == set(dice)
