"""The stock nnU-Net commands as subprocesses: a workspace of the three nnU-Net folders, the
check that their environment variables are set, a command runner that keeps the log's tail
for its error, and nnU-Net's evaluation of a prediction folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

NNUNET_DIRS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@dataclass(frozen=True)
class Workspace:
    """The three nnU-Net folders under one root."""

    root: str

    @property
    def env(self) -> dict[str, str]:
        return {name: os.path.join(self.root, name) for name in NNUNET_DIRS}

    def path(self, name: str) -> str:
        return self.env[name]


def require_nnunet_env(names: tuple[str, ...] = NNUNET_DIRS) -> dict[str, str]:
    """The nnU-Net folders from the environment, or an error that says how to set them."""
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise OSError(
            f"{', '.join(missing)} not set. nnU-Net needs its folders in environment variables, e.g.\n"
            + "\n".join(f"  export {n}=/data/nnunet/{n}" for n in missing)
            + "\nSee nnU-Net's documentation/setting_up_paths.md."
        )
    return {n: os.environ[n] for n in names}


def command_line(args: list[str]) -> list[str]:
    """``args`` with its command found on PATH, else beside this Python (a venv not activated)."""
    return [shutil.which(args[0]) or os.path.join(os.path.dirname(sys.executable), args[0]), *args[1:]]


def command_env(env: dict[str, str] | None) -> dict[str, str]:
    """This process's environment with ``env``, and unbuffered Python output (logs line by line)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}


def failure_message(args: list[str], returncode: int, tail: Iterable[str]) -> str:
    """What a failed command's error says: the command, its exit code and its output's tail."""
    return f"`{' '.join(args)}` failed with exit code {returncode}:\n{''.join(tail)}"


def run_command(args: list[str], env: dict[str, str] | None = None, log_path: str | None = None,
                quiet: bool = False, append: bool = False, on_line: Callable[[str], None] | None = None) -> float:
    """Runs one CLI command; raises with the log's tail if it fails. Returns seconds taken.
    Output goes to ``log_path`` (appended with ``append``), unless ``quiet`` to stdout, and
    line by line to ``on_line`` as it comes."""
    start = time.perf_counter()
    with open(log_path or os.devnull, "a" if append else "w") as log:
        proc = subprocess.Popen(command_line(args), env=command_env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        tail: deque[str] = deque(maxlen=40)
        try:
            for line in proc.stdout:
                log.write(line)
                tail.append(line)
                if on_line:
                    on_line(line)
                if not quiet:
                    sys.stdout.write("    " + line)
                    sys.stdout.flush()
            proc.wait()
        except BaseException:  # Ctrl-C: the command has ended when we do (nothing writes on behind us)
            end_process(proc)
            raise
    if proc.returncode:
        raise RuntimeError(failure_message(args, proc.returncode, tail))
    return time.perf_counter() - start


def end_process(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Terminates ``proc`` (SIGTERM, then SIGKILL after ``timeout_s``) and waits for it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def describe_error(err: BaseException) -> str:
    """``"Type: first line of the message"`` (a failed command's error carries its log's tail after it)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def evaluate_folder(gt_dir: str, pred_dir: str, labels: list[int], env: dict[str, str] | None = None) -> dict:
    """nnUNetv2_evaluate_simple; returns the summary with per-class and mean Dice."""
    out = os.path.join(pred_dir, "summary.json")
    run_command(["nnUNetv2_evaluate_simple", gt_dir, pred_dir, "-l", *map(str, labels), "-o", out], env, quiet=True)
    with open(out) as f:
        return json.load(f)
