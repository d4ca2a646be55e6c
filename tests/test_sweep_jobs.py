"""Sweep jobs: trainers on plans of their own (``-tr TRAINER:PLANS``), plans that are missing, the
state of a fold that is done while its process ends, and the stops and resumes its status shows."""

import os
import socket
import subprocess
import sys
import time

import pytest

from nnunetv2_segresmamba.sweeps import status
from nnunetv2_segresmamba.sweeps.jobs import FoldJob, require_plans, trainer_and_plans, write_record
from nnunetv2_segresmamba.sweeps.status import job_states, stops_and_resumes
from nnunetv2_segresmamba.tools.layout import CHECKPOINT_FINAL, VALIDATION_SUMMARY
from nnunetv2_segresmamba.tools.stopping import (
    IN_VALIDATION,
    resumed_epoch,
    resumed_line,
    stopped_epoch,
    stopped_in_validation_line,
    stopped_line,
)

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
    assert "nnUNetResEncUNetXLPlans (nnUNetv2_plan_experiment -d 991 -pl nnUNetPlannerResEncXL;" in message
    assert "nnUNetv2_plan_and_preprocess -d 991, or the planner that writes CustomPlans" in message
    assert "nnUNetPlans (" not in message


def test_the_planning_advice_is_a_command_nnunet_takes(tmp_path, monkeypatch):
    from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import plan_experiment_entry

    job = FoldJob(DATASET, "3d_fullres", "nnUNetTrainerComparisonNnUNet", 0, plans="nnUNetResEncUNetMPlans")
    with pytest.raises(ValueError) as error:
        require_plans([job], tmp_path)
    command = str(error.value).split("(")[1].split(";")[0].split()
    monkeypatch.setattr(sys, "argv", [*command, "--help"])  # parses -d and -pl, then prints the help
    with pytest.raises(SystemExit) as exited:
        plan_experiment_entry()
    assert exited.value.code == 0


def test_a_done_fold_whose_process_has_not_recorded_its_end_is_still_running(tmp_path, monkeypatch):
    """A fold's files say it is done (checkpoint_final.pth, validation/summary.json) a moment before
    its process records the end (the epochs it resumed at): ``sweep --wait`` must wait for that."""
    job, results, sweep_dir = FoldJob(DATASET, "3d_fullres", "nnUNetTrainerSegResMamba", 0), tmp_path / "r", tmp_path
    fold_dir = job.fold_dir(results)
    (fold_dir / VALIDATION_SUMMARY).parent.mkdir(parents=True)
    (fold_dir / CHECKPOINT_FINAL).write_text("")
    (fold_dir / VALIDATION_SUMMARY).write_text("{}")
    ended = subprocess.Popen(["true"])
    ended.wait()

    def state(**record) -> tuple[str, str]:
        write_record(sweep_dir, job, **record)
        status = job_states([job], sweep_dir, results)[0]
        return status.state, status.detail

    host, now = socket.gethostname(), time.time()
    monkeypatch.setattr(status, "squeue_states", lambda: {"123_4": "RUNNING"})  # SLURM's queue, as squeue gives it
    assert state(state="running", host=host, pid=os.getpid(), started=now, slurm_job_id=None)[0] == "running"
    assert state(state="running", host=host, pid=ended.pid, started=now, slurm_job_id=None) == ("done", "")
    # this pid began after the record's start: another process that reuses the recorded one's pid
    assert state(state="running", host=host, pid=os.getpid(), started=now - 3600, slurm_job_id=None) == ("done", "")
    assert state(state="running", host="elsewhere", pid=os.getpid(), started=now, slurm_job_id=None) == ("done", "")
    assert state(state="running", host=host, pid=1, started=now, slurm_job_id="123_4")[0] == "running"  # queued
    assert state(state="running", host=host, pid=1, started=now, slurm_job_id="123_5") == ("done", "")  # left it
    assert state(state="done", host=host, pid=os.getpid(), started=now, slurm_job_id=None) == ("done", "")


def test_the_status_says_where_each_stop_resumes():
    """The trainer's log lines, read back by the sweep: an epoch, the final validation (which --c
    redoes), or nothing (killed before a checkpoint); and the status line built from the record."""
    assert stopped_epoch(stopped_line("SIGUSR1", 7)) == 7 and resumed_epoch(resumed_line(7)) == 7
    assert stopped_epoch("2026-12-08 10:00:00.000: " + stopped_in_validation_line("SIGTERM")) == IN_VALIDATION
    assert stopped_epoch(resumed_line(7)) is None and resumed_epoch(stopped_line("SIGUSR1", 7)) is None
    record = {"stopped_at": [2, IN_VALIDATION, None], "resumed_at": [2]}
    assert stops_and_resumes(record) == "3 stops (--c at epochs 2, validation, ?); resumed at epochs 2"
    assert stops_and_resumes({}) == ""
