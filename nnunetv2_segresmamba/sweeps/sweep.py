"""``nnunetv2_segresmamba sweep``: plan the jobs, skip what is done or still active, run the rest; then,
where the sweep has a test set, each trainer's ensemble of its done folds predicts it."""

from __future__ import annotations

import time
from pathlib import Path

from nnunetv2_segresmamba.sweeps.executors import SlurmOptions, run_local, submit_slurm
from nnunetv2_segresmamba.sweeps.jobs import FoldJob, read_plan, write_plan
from nnunetv2_segresmamba.sweeps.predict import PredictJob, predict_jobs, read_test_sets
from nnunetv2_segresmamba.sweeps.status import ACTIVE, JobStatus, format_table, job_states

Job = FoldJob | PredictJob
INTERRUPTED_EXIT_CODE = 130  # a shell's code for a command ended by Ctrl-C


def run_sweep(jobs: list[FoldJob], sweep_dir: Path, results: str, executor: str = "local", device: str = "cuda",
              dry_run: bool = False, wait: bool = False, gpus: int = 1, slurm: SlurmOptions | None = None,
              poll_s: float = 10.0) -> int:
    """Runs the sweep, then its test-set ensembles (see :mod:`~nnunetv2_segresmamba.sweeps.predict`);
    returns a process exit code (1 when a job failed, 130 after Ctrl-C)."""
    if not dry_run:
        write_plan(sweep_dir, jobs)
    code, settled = run_phase(jobs, sweep_dir, results, executor, device, dry_run, wait, gpus, slurm, poll_s)
    sets = read_test_sets(sweep_dir)
    if not sets or not settled:
        return code
    ensembles, notes = predict_jobs(read_plan(sweep_dir) if not dry_run else jobs, sweep_dir, results, sets)
    for note in notes:
        print(note, flush=True)
    if not ensembles:
        return code
    print("test set:", flush=True)
    return max(code, run_phase(ensembles, sweep_dir, results, executor, device, dry_run, wait, gpus, slurm,
                               poll_s)[0])


def run_phase(jobs: list[Job], sweep_dir: Path, results: str, executor: str, device: str, dry_run: bool, wait: bool,
              gpus: int, slurm: SlurmOptions | None, poll_s: float) -> tuple[int, bool]:
    """Runs the jobs not done or active; returns (exit code, whether every job has ended)."""
    statuses = job_states(jobs, sweep_dir, results)
    todo = [s.job for s in statuses if s.state not in ("done", *ACTIVE)]
    print(_plan_table(statuses, executor, dry_run), flush=True)
    if dry_run:
        return 0, False
    if not todo:
        return 0, not any(s.state in ACTIVE for s in statuses)
    if executor == "local":
        try:
            outcomes = run_local(todo, sweep_dir, device, gpus)
        except KeyboardInterrupt:
            print(format_table(job_states(jobs, sweep_dir, results)))
            print("stopped by Ctrl-C: run the same command again to resume", flush=True)
            return INTERRUPTED_EXIT_CODE, False
        failed = any(outcome in ("failed", "stopped") for outcome in outcomes.values())  # stopped: not done
        final = job_states(jobs, sweep_dir, results)
    else:
        ids = submit_slurm(todo, sweep_dir, device, slurm or SlurmOptions())
        print(f"submitted {len(ids)} array tasks: {', '.join(ids.values())}", flush=True)
        if not wait:
            print(f"follow with: nnunetv2_segresmamba status --sweep-dir {sweep_dir} (a sweep with a test set: run "
                  "it again when its folds are done, to predict the test set)")
            return 0, False
        final = wait_for(jobs, sweep_dir, results, poll_s)
        failed = any(s.state != "done" for s in final)
    print(format_table(final))
    return (1 if failed else 0), True


def wait_for(jobs: list[Job], sweep_dir: Path, results: str, poll_s: float) -> list[JobStatus]:
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
