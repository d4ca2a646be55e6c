"""The graceful stop's protocol between a training process and whoever runs it (a user's sbatch
script, a sweep): the signals that stop a trainer, its exit status when it stopped, and the log
lines that say where it stopped and where it resumed.

Standard library only, so that the sweep reads these without importing nnU-Net or torch. The
trainer's side is :mod:`nnunetv2_segresmamba.trainers.graceful_stop`.
"""

from __future__ import annotations

import re
import signal
from typing import Literal

# SLURM's --signal=USR1@SECONDS (a user's choice), and SIGTERM: SLURM's preemption and time limit,
# docker stop, kill. The sweep forwards SIGUSR1 to its training process.
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
FORWARDED_SIGNAL = signal.SIGUSR1
# EX_TEMPFAIL of sysexits.h, "a temporary failure: retry later": checkpoint_latest.pth is written,
# run the same command with --c to resume. Neither 0 (nothing finished) nor 1 (nothing failed).
STOPPED_EXIT_CODE = 75

_STOPPED = "Stopped by {signal}, not failed: checkpoint_latest.pth written; --c resumes at epoch {epoch}"
_RESUMED = "Resuming at epoch {epoch}"
_STOPPED_RE = re.compile(r"Stopped by (\w+), not failed: checkpoint_latest\.pth written; --c resumes at epoch (\d+)")
_STOPPED_IN_VALIDATION = "Stopped by {signal} during the final validation, not failed: --c redoes the validation"
_STOPPED_IN_VALIDATION_RE = re.compile(r"Stopped by \w+ during the final validation, not failed")
_RESUMED_RE = re.compile(r"Resuming at epoch (\d+)")
IN_VALIDATION = "validation"  # where --c resumes after a stop in the final validation: it redoes it


def stopped_line(signal_name: str, epoch: int) -> str:
    """The trainer's log line when it stopped in training; ``epoch`` is where ``--c`` resumes."""
    return _STOPPED.format(signal=signal_name, epoch=epoch)


def stopped_in_validation_line(signal_name: str) -> str:
    """The trainer's log line when it stopped in the validation after the last epoch."""
    return _STOPPED_IN_VALIDATION.format(signal=signal_name)


def resumed_line(epoch: int) -> str:
    """The trainer's log line when it starts training from a checkpoint at ``epoch`` (> 0)."""
    return _RESUMED.format(epoch=epoch)


def stopped_epoch(line: str) -> int | Literal["validation"] | None:
    """The epoch where ``--c`` resumes, if ``line`` is a :func:`stopped_line`; :data:`IN_VALIDATION`
    if it is a :func:`stopped_in_validation_line`; else None."""
    match = _STOPPED_RE.search(line)
    if match:
        return int(match.group(2))
    return IN_VALIDATION if _STOPPED_IN_VALIDATION_RE.search(line) else None


def resumed_epoch(line: str) -> int | None:
    """The epoch, if ``line`` is a :func:`resumed_line`; else None."""
    match = _RESUMED_RE.search(line)
    return int(match.group(1)) if match else None
