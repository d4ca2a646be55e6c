"""Sweep jobs: trainers on plans of their own (``-tr TRAINER:PLANS``), and plans that are missing."""

import pytest

from nnunetv2_segresmamba.sweeps.jobs import FoldJob, require_plans, trainer_and_plans

DATASET = "Dataset991_E2E"


def test_a_trainer_takes_its_own_plans_or_the_default():
    assert trainer_and_plans("nnUNetTrainerSegResMamba") == ("nnUNetTrainerSegResMamba", "nnUNetPlans")
    assert trainer_and_plans("nnUNetTrainerSegResMamba", "MyPlans") == ("nnUNetTrainerSegResMamba", "MyPlans")
    assert trainer_and_plans("nnUNetTrainerComparisonNnUNet:nnUNetResEncUNetMPlans") == (
        "nnUNetTrainerComparisonNnUNet", "nnUNetResEncUNetMPlans")
    for bad in ("nnUNetTrainerComparisonNnUNet:", ":nnUNetPlans", "a:b:c"):
        with pytest.raises(ValueError, match="TRAINER or TRAINER:PLANS"):
            trainer_and_plans(bad)


def test_job_folders_follow_nnunet_per_plans():
    job = FoldJob(DATASET, "3d_fullres", "nnUNetTrainerComparisonNnUNet", 2, plans="nnUNetResEncUNetLPlans")
    assert str(job.fold_dir("/r")) == (f"/r/{DATASET}/nnUNetTrainerComparisonNnUNet__nnUNetResEncUNetLPlans__"
                                       "3d_fullres/fold_2")
    assert job.command("cuda")[-4:] == ["-p", "nnUNetResEncUNetLPlans", "-device", "cuda"]


def test_missing_plans_are_named_with_the_planner_that_makes_them(tmp_path):
    (tmp_path / DATASET).mkdir()
    (tmp_path / DATASET / "nnUNetPlans.json").write_text("{}")
    jobs = [FoldJob(DATASET, "3d_fullres", "nnUNetTrainerSegResMamba", 0),
            FoldJob(DATASET, "3d_fullres", "nnUNetTrainerComparisonNnUNet", 0, plans="nnUNetResEncUNetXLPlans"),
            FoldJob(DATASET, "3d_fullres", "nnUNetTrainerComparisonNnUNet", 0, plans="CustomPlans")]
    require_plans(jobs[:1], tmp_path)
    with pytest.raises(ValueError) as error:
        require_plans(jobs, tmp_path)
    message = str(error.value)
    assert f"nnUNetv2_plan_experiment -d {DATASET} -pl nnUNetPlannerResEncXL" in message
    assert "CustomPlans" in message and "nnUNetPlans (" not in message
