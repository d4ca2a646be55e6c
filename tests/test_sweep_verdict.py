"""The report's per-case part on a real results tree of NIfTI files: three trainers x 3 folds of 2
validation cases each, one trainer's fold 2 never validated, and a test set predicted by the
complete trainers' ensembles. SegResMamba predicts every organ exactly, its No-ToM control one
voxel off, SegMamba two voxels off, so every statistic is known in advance."""

import csv
import json

import numpy as np
import pytest

from nnunetv2_segresmamba.sweeps.jobs import FoldJob, read_plan, write_plan
from nnunetv2_segresmamba.sweeps.predict import PredictJob
from nnunetv2_segresmamba.sweeps.report import build_report
from nnunetv2_segresmamba.sweeps.verdict import check_reference
from nnunetv2_segresmamba.tools.layout import PLAN_FILE, TEST_SET_FILE
from tests.test_evaluation import sphere, write_nifti
from tests.workspaces import record_member

DATASET, CONFIGURATION = "Dataset991_E2E", "3d_fullres"
OURS, CONTROL, THEIRS = "nnUNetTrainerSegResMamba", "nnUNetTrainerSegResMambaNoToM", "nnUNetTrainerSegMamba"
SHIFT = {OURS: 0, CONTROL: 1, THEIRS: 2}  # voxels along z of each trainer's predictions
SHAPE, SPACING = (15, 33, 29), (3.0, 1.0, 0.8)
DATASET_JSON = {"labels": {"background": 0, "liver": 1, "spleen": 2}, "file_ending": ".nii.gz",
                "channel_names": {"0": "CT"}, "numTraining": 6}
PNG = b"\x89PNG\r\n\x1a\n"


def reference(case: int) -> np.ndarray:
    return sphere([6, 10, 9], 6.0 + case % 3) * 1 + sphere([8, 24, 20], 5.0 + case % 2) * 2


def prediction(case: int, trainer: str) -> np.ndarray:
    return np.roll(reference(case), SHIFT[trainer], axis=0)


def write_dataset_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    (folder / "plans.json").write_text(json.dumps({"image_reader_writer": "SimpleITKIO"}))


def make_sweep(tmp_path):
    """Folds 0-2 of 2 cases each (cases 2f, 2f+1); THEIRS's fold 2 trained, not validated; test cases 10, 11."""
    results, sweep, gt = tmp_path / "nnUNet_results", tmp_path / "sweep", tmp_path / "gt_segmentations"
    gt.mkdir()
    for case in range(6):
        write_nifti(reference(case), gt / f"case_{case}.nii.gz")
    jobs = [FoldJob(DATASET, CONFIGURATION, t, f) for t in SHIFT for f in range(3)]
    write_plan(sweep, jobs)
    for job in jobs:
        fold_dir = job.fold_dir(results)
        write_dataset_files(fold_dir.parent)
        fold_dir.mkdir()
        (fold_dir / "checkpoint_final.pth").write_bytes(b"")
        record_member(fold_dir, job.trainer, job.plans)
        if job.trainer == THEIRS and job.fold == 2:
            continue
        (fold_dir / "validation").mkdir()
        cases = []
        for case in (2 * job.fold, 2 * job.fold + 1):
            pred = fold_dir / "validation" / f"case_{case}.nii.gz"
            write_nifti(prediction(case, job.trainer), pred)
            cases.append({"reference_file": str(gt / f"case_{case}.nii.gz"), "prediction_file": str(pred)})
        summary = {"foreground_mean": {"Dice": 0.9}, "mean": {"1": {"Dice": 0.9}, "2": {"Dice": 0.9}},
                   "metric_per_case": cases}
        (fold_dir / "validation" / "summary.json").write_text(json.dumps(summary))
    labels = tmp_path / "labelsTs"
    labels.mkdir()
    for case in (10, 11):
        write_nifti(reference(case), labels / f"case_{case}.nii.gz")
    (sweep / TEST_SET_FILE).write_text(json.dumps({DATASET: {"images": str(tmp_path / "imagesTs"),
                                                             "labels": str(labels)}}))
    for trainer in (OURS, CONTROL):  # THEIRS has a missing fold: no ensemble
        out = PredictJob(DATASET, CONFIGURATION, trainer, "nnUNetPlans", (0, 1, 2),
                         str(tmp_path / "imagesTs")).output_dir(sweep)
        write_dataset_files(out)
        for case in (10, 11):
            write_nifti(prediction(case, trainer), out / f"case_{case}.nii.gz")
    return sweep, results


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def case_scores(cases, trainer, split, metric):
    """{case: mean over classes}, from cases.csv by a plain loop."""
    sums = {}
    for r in cases:
        if r["trainer"] == trainer and r["split"] == split:
            sums.setdefault(r["case"], []).append(float(r[metric]))
    return {c: sum(v) / len(v) for c, v in sums.items()}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    sweep, results = make_sweep(tmp_path_factory.mktemp("verdict"))
    return build_report(sweep, results), sweep / "report"


def test_every_case_is_evaluated_and_a_missing_fold_is_refused_not_averaged(report):
    written, out = report
    assert {"cases.csv", "paired.csv", "ranking.csv", "statistics.md", "forest.png", "rank_stability.png",
            "cases_dice.png", "cases_hd95_mm.png", "cases_nsd.png"} <= {p.name for p in written}
    assert all(p.read_bytes().startswith(PNG) for p in written if p.suffix == ".png")
    cases = read_csv(out / "cases.csv")
    cv = {(r["trainer"], r["case"]) for r in cases if r["split"] == "cross-validation"}
    assert cv == {(t, f"case_{c}") for t in (OURS, CONTROL) for c in range(6)}  # THEIRS left out: fold 2 missing
    test = {(r["trainer"], r["case"]) for r in cases if r["split"] == "test"}
    assert test == {(t, f"case_{c}") for t in (OURS, CONTROL) for c in (10, 11)}
    assert all(float(r["dice"]) == 1.0 and float(r["hd95_mm"]) == 0.0 for r in cases if r["trainer"] == OURS)
    md = (out / "statistics.md").read_text()
    assert f"{DATASET} {CONFIGURATION} {THEIRS} fold 2: not done" in md
    assert f"{THEIRS}: left out of the cross-validation statistics" in md
    assert f"no test-set ensemble for {DATASET} {CONFIGURATION} {THEIRS} (nnUNetPlans): fold(s) 2 not done" in md


def test_paired_statistics_controls_and_ranking_follow_the_cases(report):
    _, out = report
    cases, paired = read_csv(out / "cases.csv"), read_csv(out / "paired.csv")
    for split, n in (("cross-validation", 6), ("test", 2)):
        ours, control = (case_scores(cases, t, split, "dice") for t in (OURS, CONTROL))
        rows = {(r["kind"], r["metric"]): r for r in paired if r["split"] == split}
        vs = rows["reference", "dice"]  # the reference: the sweep's first trainer, SegResMamba
        assert (vs["trainer"], vs["versus"], int(vs["cases"])) == (CONTROL, OURS, n)
        assert float(vs["mean_difference"]) == pytest.approx(sum(control[c] - ours[c] for c in ours) / n)
        assert (vs["wins"], vs["ties"], vs["losses"]) == ("0", "0", str(n))
        assert float(vs["p"]) == pytest.approx(2 / 2 ** n)  # exact: all n differences negative
        assert float(vs["ci_high"]) < 0
        control_row = rows["control", "dice"]  # the network minus its ablation: what ToM buys
        assert (control_row["trainer"], control_row["versus"]) == (OURS, CONTROL)
        assert float(control_row["mean_difference"]) == pytest.approx(-float(vs["mean_difference"]))
        hd = rows["reference", "hd95_mm"]
        assert float(hd["mean_difference"]) > 0 and hd["losses"] == str(n)  # HD95: larger is worse
    ranking = {(r["split"], r["metric"], r["trainer"]): r for r in read_csv(out / "ranking.csv")}
    assert float(ranking["cross-validation", "dice", OURS]["mean_rank"]) == 1.0
    assert float(ranking["cross-validation", "dice", OURS]["share_first"]) == 1.0
    md = (out / "statistics.md").read_text()
    assert "### Controls: what the ablated part buys" in md and f"### Against the reference {OURS}" in md


def test_allow_incomplete_compares_on_shared_cases_and_holm_corrects(tmp_path):
    sweep, results = make_sweep(tmp_path)
    build_report(sweep, results, allow_incomplete=True, reference=OURS)
    out = sweep / "report"
    rows = [r for r in read_csv(out / "paired.csv")
            if r["split"] == "cross-validation" and r["kind"] == "reference" and r["metric"] == "dice"]
    assert sorted(r["trainer"] for r in rows) == sorted([CONTROL, THEIRS]) and {r["cases"] for r in rows} == {"4"}
    p = sorted(float(r["p"]) for r in rows)
    assert sorted(float(r["p_holm"]) for r in rows) == pytest.approx([min(1, 2 * p[0]), min(1, max(2 * p[0], p[1]))])
    md = (out / "statistics.md").read_text()
    assert f"| {THEIRS} (incomplete) |" in md and "Shared cases: 4." in md


def test_every_ablation_names_the_network_it_changes():
    """The control pairs come from ``Member.ablates``: each ablation of the family names a member's network."""
    from nnunetv2_segresmamba.registry import ABLATION, members, network

    assert all(network(m.ablates).group != ABLATION for m in members(ABLATION))
    assert network("U-Mamba Bot-NoMamba").ablates == "U-Mamba Bot"
    assert network("SegResMamba-NoToM").ablates == "SegResMamba" and network("SegResMamba").ablates is None


def test_the_default_reference_is_the_sweeps_first_trainer_not_the_best(tmp_path):
    """The reference is chosen before the results are seen: the sweep's first trainer (``-tr`` order),
    here SegMamba, which has a missing fold, so each panel says it compares with the next one, the
    one-voxel-off control, and never with the trainer with the best mean Dice. An unknown
    ``--reference`` is refused before anything is evaluated or written."""
    sweep, results = make_sweep(tmp_path)
    jobs = read_plan(sweep)
    (sweep / PLAN_FILE).unlink()
    order = (THEIRS, CONTROL, OURS)
    write_plan(sweep, sorted(jobs, key=lambda j: order.index(j.trainer)))
    with pytest.raises(ValueError, match=f"--reference UMambaBot is not a trainer of this sweep: {THEIRS}, {CONTROL}"):
        build_report(sweep, results, reference="UMambaBot")
    assert not (sweep / "report").exists()
    assert check_reference(sweep, f"{OURS}:nnUNetPlans") == OURS  # the default plans, named or not
    build_report(sweep, results)
    rows = [r for r in read_csv(sweep / "report" / "paired.csv") if r["kind"] == "reference" and r["metric"] == "dice"]
    assert {(r["split"], r["trainer"], r["versus"]) for r in rows} == {
        ("cross-validation", OURS, CONTROL), ("test", OURS, CONTROL)}
    assert all(float(r["mean_difference"]) > 0 for r in rows)
    md = (sweep / "report" / "statistics.md").read_text()
    assert md.count(f"the reference {THEIRS} is not in this panel; compared with {CONTROL} instead") == 2
