"""The local executor: a job failing with any exception is recorded as failed, and the sweep goes on."""

import pytest

from nnunetv2_segresmamba.sweeps import executors
from nnunetv2_segresmamba.sweeps.jobs import FoldJob, log_path, read_record
from nnunetv2_segresmamba.sweeps.status import job_states
from nnunetv2_segresmamba.tools.pipeline import describe_error

JOBS = [FoldJob("Dataset990_Unit", "3d_fullres", "nnUNetTrainer", fold) for fold in (0, 1)]


def test_a_job_failing_inside_run_fold_leaves_a_failed_record_not_a_running_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    sweep_dir = tmp_path / "sweep"
    log_path(sweep_dir, JOBS[0]).mkdir(parents=True)  # its log cannot be opened: an OSError, after "running"

    outcomes = executors.run_local(JOBS[:1], sweep_dir, "cpu")

    assert outcomes == {JOBS[0].key: "failed"}
    record = read_record(sweep_dir, JOBS[0])
    assert record["state"] == "failed" and record["ended"] >= record["started"]
    assert record["error"].startswith("IsADirectoryError: [Errno 21] Is a directory")
    [status] = job_states(JOBS[:1], sweep_dir, tmp_path / "results")
    assert (status.state, status.detail) == ("failed", record["error"])
    assert f"FAILED {JOBS[0].key}: IsADirectoryError" in capsys.readouterr().out


@pytest.mark.parametrize(("device", "gpus"), [("cpu", 1), ("cuda", 2)])  # in turn, and one thread per GPU
def test_any_exception_is_recorded_with_its_type_and_the_other_jobs_still_run(tmp_path, monkeypatch, device, gpus):
    def run_job(job, sweep_dir, device, env):
        if job.fold == 0:
            raise ValueError("bad fold\nlog tail")
        return "done"

    monkeypatch.setattr(executors, "run_job", run_job)  # no nnU-Net: the GPU threads run on any machine

    outcomes = executors.run_local(JOBS, tmp_path, device, gpus)

    assert outcomes == {JOBS[0].key: "failed", JOBS[1].key: "done"}


def test_errors_are_described_by_type_and_first_line():
    assert describe_error(RuntimeError("`nnUNetv2_train ...` failed with exit code 1:\ntail")) == (
        "RuntimeError: `nnUNetv2_train ...` failed with exit code 1:")
    assert describe_error(KeyError("nnUNet_results")) == "KeyError: 'nnUNet_results'"
    assert describe_error(MemoryError()) == "MemoryError"
