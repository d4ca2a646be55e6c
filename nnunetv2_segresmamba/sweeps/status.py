"""The state of every job of a sweep, from the fold folders, the job records and SLURM's queue.

- ``done``: trained and validated (``checkpoint_final.pth`` and ``validation/summary.json``); a test-set
  ensemble: its predictions complete (``sweeps.predict``);
- ``running`` / ``pending``: a live process here, or a task in ``squeue`` (also a done job whose
  process is still seen running, ending: ``--wait`` returns once it has recorded its end; a
  process on another host cannot be seen from here);
- ``stopped``: the trainer stopped gracefully (Ctrl-C, SIGUSR1/SIGTERM) and was not requeued: run
  the sweep again to resume it;
- ``failed``: nnU-Net failed, or the job was killed or left the queue before finishing;
- ``not started``: never run or submitted.

The detail of a fold that was stopped says how often and at which epochs it stopped and resumed
(the job record's ``stopped_at`` and ``resumed_at``): ``2 stops (--c at epochs 2, 3); resumed
at epochs 2, 3``; a stop in the final validation reads ``validation``, a stop that wrote no
checkpoint (a second Ctrl-C killed the trainer) ``?``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from nnunetv2_segresmamba.sweeps.executors import submitted_ids
from nnunetv2_segresmamba.sweeps.jobs import FoldJob, log_path, read_record
from nnunetv2_segresmamba.sweeps.predict import job_is_done

ACTIVE = ("running", "pending")


@dataclass(frozen=True)
class JobStatus:
    job: FoldJob
    state: str
    detail: str
    log: Path


def squeue_states() -> dict[str, str]:
    """{job id: SLURM state} of the queue, array tasks one by one; empty without SLURM."""
    if shutil.which("squeue") is None:
        return {}
    result = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True)
    if result.returncode:
        return {}
    return dict(line.split("|", 1) for line in result.stdout.split())


def job_states(jobs: list[FoldJob], sweep_dir: Path, results: str | os.PathLike) -> list[JobStatus]:
    queue, submitted = squeue_states(), submitted_ids(sweep_dir)
    return [JobStatus(job, *_state(job, sweep_dir, results, queue, submitted.get(job.key)), log_path(sweep_dir, job))
            for job in jobs]


def _state(job: FoldJob, sweep_dir: Path, results, queue: dict[str, str], slurm_id: str | None) -> tuple[str, str]:
    record = read_record(sweep_dir, job) or {}
    state, detail = _plain_state(job, sweep_dir, record, results, queue, slurm_id)
    return state, "; ".join(filter(None, [detail, stops_and_resumes(record)]))


def stops_and_resumes(record: dict) -> str:
    """``N stops (--c at epochs ...); resumed at epochs ...`` from a job record, or ""."""
    stops, resumes = record.get("stopped_at") or [], record.get("resumed_at") or []
    if not stops and not resumes:
        return ""
    epochs = ", ".join("?" if e is None else str(e) for e in stops)  # ?: no checkpoint written (killed);
    # "validation": stopped in the final validation, which --c redoes
    text = f"{len(stops)} stop{'s' * (len(stops) != 1)} (--c at epochs {epochs})" if stops else ""
    return "; ".join(filter(None, [text, f"resumed at epochs {', '.join(map(str, resumes))}" if resumes else ""]))


def _plain_state(job: FoldJob, sweep_dir: Path, record: dict, results, queue: dict[str, str],
                 slurm_id: str | None) -> tuple[str, str]:
    if job_is_done(job, sweep_dir, results):
        if record.get("state") == "running" and _still_running(record, queue):
            return "running", "finishing (its results are written; its process is ending)"
        return "done", ""
    if record.get("state") == "running":
        return _running_or_lost(record, queue)
    if slurm_id in queue:
        return ("running" if queue[slurm_id] == "RUNNING" else "pending"), f"SLURM {slurm_id} {queue[slurm_id]}"
    if record.get("state") == "failed":
        return "failed", record.get("error") or ""
    if record.get("state") == "stopped":
        return "stopped", "rerun the sweep to resume"
    if slurm_id:
        return "failed", f"SLURM {slurm_id} left the queue without running"
    return "not started", ""


def _running_or_lost(record: dict, queue: dict[str, str]) -> tuple[str, str]:
    slurm_id = record.get("slurm_job_id")
    if slurm_id:
        if slurm_id in queue:
            return "running", f"SLURM {slurm_id} on {record['host']}"
        return "failed", f"SLURM {slurm_id} ended while training (killed, preempted or out of time)"
    if record.get("host") != socket.gethostname():
        return "running", f"pid {record['pid']} on {record['host']} (cannot check from here)"
    if _alive(record["pid"], record.get("started")):
        return "running", f"pid {record['pid']}"
    return "failed", f"pid {record['pid']} ended while training (killed)"


def _still_running(record: dict, queue: dict[str, str]) -> bool:
    """Whether the process of a ``running`` record is seen to run: its SLURM task is queued, or its
    pid lives on this host. A fold's files say it is done before its process has recorded the end.
    A process on another host cannot be checked from here: its files are taken as they are."""
    slurm_id = record.get("slurm_job_id")
    if slurm_id:
        return slurm_id in queue
    return record.get("host") == socket.gethostname() and _alive(record["pid"], record.get("started"))


def _alive(pid: int, started: float | None = None) -> bool:
    """Whether ``pid`` runs on this host and, where the record's ``started`` (``time.time()``) is
    given and Linux's /proc says when the process began, began before it: not a later process
    that reuses the pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    began = _start_time(pid)
    return started is None or began is None or began <= started + 2  # /proc/stat's btime: whole seconds


def _start_time(pid: int) -> float | None:
    """When ``pid`` began (seconds since the epoch), from /proc; None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime: clock ticks after boot
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def format_table(statuses: list[JobStatus]) -> str:
    rows = [("state", "job", "detail", "log")] + [(s.state, s.job.key, s.detail, str(s.log)) for s in statuses]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    counts = {state: sum(s.state == state for s in statuses) for state in dict.fromkeys(s.state for s in statuses)}
    return "\n".join(lines + ["", ", ".join(f"{n} {state}" for state, n in counts.items())])
