"""Where sweep jobs run: here, one after another or one per visible GPU, or as a SLURM job
array through submitit (``pip install "nnunetv2-segresmamba[cluster]"``)."""

from __future__ import annotations

import json
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from nnunetv2_segresmamba.sweeps.child import Interrupted, kill_children, stop_children
from nnunetv2_segresmamba.sweeps.jobs import FoldJob
from nnunetv2_segresmamba.sweeps.predict import run_job
from nnunetv2_segresmamba.tools.layout import SUBMITTED_FILE, write_atomically
from nnunetv2_segresmamba.tools.pipeline import NNUNET_DIRS, describe_error


def nnunet_env() -> dict[str, str]:
    """The nnU-Net folder variables of this shell, handed to every job."""
    return {name: os.environ[name] for name in NNUNET_DIRS if name in os.environ}


def run_local(jobs: list[FoldJob], sweep_dir: Path, device: str, gpus: int = 1) -> dict[str, str]:
    """Runs ``jobs`` here: in turn, or with ``gpus`` > 1 one job per GPU (CUDA_VISIBLE_DEVICES).
    A failed job is reported and the others still run (see :func:`run_recorded`). Returns
    {job key: done/skipped/failed/stopped}. Ctrl-C stops the running trainings gracefully
    (:mod:`.child`; again: kills them), starts no other job and raises KeyboardInterrupt."""
    pending: queue.Queue[FoldJob] = queue.Queue()
    for job in jobs:
        pending.put(job)
    outcomes: dict[str, str] = {}
    interrupted = threading.Event()

    def worker(gpu: int | None) -> None:
        env = nnunet_env() if gpu is None else {**nnunet_env(), "CUDA_VISIBLE_DEVICES": str(gpu)}
        while not interrupted.is_set():
            try:
                job = pending.get_nowait()
            except queue.Empty:
                return
            outcomes[job.key] = run_recorded(job, sweep_dir, device, env)
            print(f"{outcomes[job.key]:>8}  {job.key}", flush=True)

    if device != "cuda" or gpus <= 1:
        worker(None)  # Ctrl-C reaches run_child, in this thread
        return outcomes
    threads = [threading.Thread(target=worker, args=(gpu,)) for gpu in range(gpus)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:  # in this thread, not the workers': stop their children from here
        interrupted.set()
        print("\nCtrl-C: stopping the trainings at their next iteration; Ctrl-C again kills them", flush=True)
        try:
            stop_children(timeout_s=None)
        except KeyboardInterrupt:
            kill_children()
        for thread in threads:
            thread.join()
        raise
    return outcomes


def run_recorded(job: FoldJob, sweep_dir: Path, device: str, env: dict[str, str] | None = None) -> str:
    """:func:`~nnunetv2_segresmamba.sweeps.predict.run_job` (a fold, or a test-set ensemble), returning
    ``"failed"`` instead of raising any Exception (it is written to the job's record), so the sweep goes on."""
    try:
        return run_job(job, sweep_dir, device, env)
    except Interrupted:
        print(f"{'stopped':>8}  {job.key}", flush=True)
        raise
    except Exception as err:
        print(f"FAILED {job.key}: {describe_error(err)}", flush=True)
        return "failed"


@dataclass(frozen=True)
class SlurmOptions:
    """sbatch resources of each array task."""

    partition: str | None = None
    time_min: int = 72 * 60
    gpus: int = 1
    cpus: int = 8
    mem_gb: float | None = None
    array_parallelism: int = 64
    account: str | None = None

    def submitit_parameters(self) -> dict:
        params = {"name": "nnunet_sweep", "timeout_min": self.time_min, "gpus_per_node": self.gpus,
                  "cpus_per_task": self.cpus, "tasks_per_node": 1, "nodes": 1,
                  "slurm_array_parallelism": self.array_parallelism, "slurm_signal_delay_s": 120}
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        if self.account:
            params["slurm_account"] = self.account
        return params


def submit_slurm(jobs: list[FoldJob], sweep_dir: Path, device: str, options: SlurmOptions) -> dict[str, str]:
    """Submits ``jobs`` as one SLURM array; returns and records {job key: SLURM job id}."""
    from nnunetv2_segresmamba.sweeps.slurm_task import submit

    env = {**nnunet_env(), "nnUNet_n_proc_DA": str(options.cpus)}
    ids = submit(jobs, sweep_dir, device, env, options.submitit_parameters())
    write_atomically(sweep_dir / SUBMITTED_FILE, json.dumps({**submitted_ids(sweep_dir), **ids}, indent=2))
    return ids


def submitted_ids(sweep_dir: Path) -> dict[str, str]:
    path = sweep_dir / SUBMITTED_FILE
    return json.loads(path.read_text()) if path.exists() else {}
