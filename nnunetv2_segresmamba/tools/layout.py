"""The names of the files in a fold folder and in a sweep folder, and :func:`write_atomically`.

Standard library only, so that the sweep's status and report name these files without
importing nnU-Net or torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# A fold folder: nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<k>
CHECKPOINT_FINAL = "checkpoint_final.pth"  # nnU-Net's, written when training has ended
VALIDATION_SUMMARY = Path("validation", "summary.json")  # nnU-Net's metrics of the fold's validation
RUN_METRICS_FILE = "run_metrics.json"  # ours: epoch times, peak GPU memory, energy (trainers.tracking)
MEMBER_FILE = "member.json"  # ours: the trainer and the family member's network it trains

# A sweep folder
PLAN_FILE = "plan.json"  # every job of the sweep
LOGS_DIR = "logs"  # <job>.log: the output of each attempt, appended
RECORDS_DIR = "records"  # <job>.json: the last attempt's state, host, process and SLURM ids
REPORT_DIR = "report"  # the report's default folder
SUBMITTED_FILE = "submitted.json"  # the SLURM id of each submitted job
TEST_SET_FILE = "test_set.json"  # {dataset: {"images": imagesTs, "labels": labelsTs}} of `sweep --test`
TEST_DIR = "test"  # <predict job>/: each trainer's ensemble's predictions of its test set


def write_atomically(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` through a temporary file in the same folder and a rename, so
    that a reader finds the old file or the new one, never a part of one. Returns the path."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_member_record(fold_dir: str | os.PathLike, trainer: str, network: str | None) -> Path:
    """Records in a fold folder which family member's network ``trainer`` trains (None: a trainer
    outside the family), so that reports name networks without importing the trainers."""
    Path(fold_dir).mkdir(parents=True, exist_ok=True)
    return write_atomically(Path(fold_dir, MEMBER_FILE), json.dumps({"trainer": trainer, "network": network}))


def recorded_network(runs_dir: str | os.PathLike) -> str | None:
    """The network that the folds under ``runs_dir`` (``<trainer>__<plans>__<configuration>``)
    recorded with :func:`write_member_record`; None where no fold recorded one."""
    for record in sorted(Path(runs_dir).glob(f"fold_*/{MEMBER_FILE}")):
        network = json.loads(record.read_text()).get("network")
        if network:
            return network
    return None
