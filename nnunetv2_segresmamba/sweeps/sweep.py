"""``nnunetv2_segresmamba sweep``: plan the jobs, skip what is done or still active, run the rest."""

from __future__ import annotations

import time
from pathlib import Path

from nnunetv2_segresmamba.sweeps.executors import SlurmOptions, run_local, submit_slurm
from nnunetv2_segresmamba.sweeps.jobs import FoldJob, write_plan
from nnunetv2_segresmamba.sweeps.status import ACTIVE, JobStatus, format_table, job_states

INTERRUPTED_EXIT_CODE = 130  # a shell's code for a command ended by Ctrl-C


def run_sweep(jobs: list[FoldJob], sweep_dir: Path, results: str, executor: str = "local", device: str = "cuda",
              dry_run: bool = False, wait: bool = False, gpus: int = 1, slurm: SlurmOptions | None = None,
              poll_s: float = 10.0) -> int:
    """Runs the sweep; returns a process exit code (1 when a job failed, 130 after Ctrl-C)."""
    statuses = job_states(jobs, sweep_dir, results)
    todo = [s.job for s in statuses if s.state not in ("done", *ACTIVE)]
    print(_plan_table(statuses, executor, dry_run), flush=True)
    if dry_run:
        return 0
    write_plan(sweep_dir, jobs)
    if not todo:
        return 0
    if executor == "local":
        try:
            outcomes = run_local(todo, sweep_dir, device, gpus)
        except KeyboardInterrupt:
            print(format_table(job_states(jobs, sweep_dir, results)))
            print("stopped by Ctrl-C: run the same command again to resume", flush=True)
            return INTERRUPTED_EXIT_CODE
        failed = "failed" in outcomes.values()
        final = job_states(jobs, sweep_dir, results)
    else:
        ids = submit_slurm(todo, sweep_dir, device, slurm or SlurmOptions())
        print(f"submitted {len(ids)} array tasks: {', '.join(ids.values())}", flush=True)
        if not wait:
            print(f"follow with: nnunetv2_segresmamba status --sweep-dir {sweep_dir}")
            return 0
        final = wait_for(jobs, sweep_dir, results, poll_s)
        failed = any(s.state != "done" for s in final)
    print(format_table(final))
    return 1 if failed else 0


def wait_for(jobs: list[FoldJob], sweep_dir: Path, results: str, poll_s: float) -> list[JobStatus]:
    """Polls until no job is pending or running."""
    while True:
        statuses = job_states(jobs, sweep_dir, results)
        if not any(s.state in ACTIVE for s in statuses):
            return statuses
        time.sleep(poll_s)


def _plan_table(statuses: list[JobStatus], executor: str, dry_run: bool) -> str:
    def action(status: JobStatus) -> str:
        if status.state == "done":
            return "skip (done)"
        if status.state in ACTIVE:
            return f"skip ({status.state})"
        return f"{'would run' if dry_run else 'run'} ({executor})"

    width = max(len(s.job.key) for s in statuses)
    return "\n".join(f"{s.job.key.ljust(width)}  {action(s)}" for s in statuses)
