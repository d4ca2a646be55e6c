"""The SLURM side of a sweep, on submitit: one array task per fold, requeued on preemption or
timeout, resuming from the fold's latest checkpoint.

On timeout or preemption submitit gets SIGUSR2 (``slurm_signal_delay_s`` before the time limit)
and calls :meth:`SweepTask.checkpoint` in its signal handler: it forwards SIGUSR1 to the fold's
``nnUNetv2_train``, waits until the trainer has written its checkpoint and exited, records the
stop, and returns; submitit then requeues the task, which resumes the fold with ``--c``."""

from __future__ import annotations

from pathlib import Path

from nnunetv2_segresmamba.sweeps.child import STOP_WAIT_S, stop_children
from nnunetv2_segresmamba.sweeps.jobs import FoldJob, record_stop
from nnunetv2_segresmamba.sweeps.predict import run_job

try:
    import submitit
except ImportError as err:  # an optional extra
    raise ImportError('the SLURM executor needs submitit: pip install "nnunetv2-segresmamba[cluster]"') from err


class SweepTask(submitit.helpers.Checkpointable):
    """Runs one fold. submitit calls :meth:`checkpoint` on preemption or timeout and requeues the
    same call; :func:`run_fold` then resumes with ``--c`` or skips a finished fold."""

    def __init__(self, sweep_dir: str, device: str, env: dict[str, str]):
        self.sweep_dir, self.device, self.env = sweep_dir, device, env

    def __call__(self, job: FoldJob) -> str:
        return run_job(job, Path(self.sweep_dir), self.device, self.env)  # a fold or a test-set ensemble

    def checkpoint(self, job: FoldJob) -> submitit.helpers.DelayedSubmission:
        """Stops the fold's training gracefully (:func:`~.child.stop_children`), records it, and
        returns the same call for submitit to requeue."""
        for child in stop_children(STOP_WAIT_S):
            record_stop(Path(self.sweep_dir), job, child)
        return super().checkpoint(job)


def submit(jobs: list[FoldJob], sweep_dir: Path, device: str, env: dict[str, str], parameters: dict) -> dict[str, str]:
    """One array job; returns {job key: SLURM id of its task}."""
    executor = submitit.AutoExecutor(folder=sweep_dir / "slurm" / "%j", cluster="slurm")
    executor.update_parameters(**parameters)
    submitted = executor.map_array(SweepTask(str(sweep_dir), device, env), jobs)
    return {job.key: task.job_id for job, task in zip(jobs, submitted)}
