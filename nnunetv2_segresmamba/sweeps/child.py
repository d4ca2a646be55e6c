"""A fold's ``nnUNetv2_train`` as a child process that a sweep can stop gracefully.

The child ignores SIGINT (a terminal's Ctrl-C reaches the whole foreground process group: the
sweep decides) and SIGUSR2 (submitit's timeout and preemption signal, which SLURM sends to every
process of the job step: the sweep's task handles it). To stop it, the sweep forwards SIGUSR1
(:func:`stop_children`); the trainer writes its checkpoint and exits with
:data:`~nnunetv2_segresmamba.tools.stopping.STOPPED_EXIT_CODE`
(:mod:`nnunetv2_segresmamba.trainers.graceful_stop`).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from nnunetv2_segresmamba.tools.pipeline import command_env, command_line
from nnunetv2_segresmamba.tools.stopping import FORWARDED_SIGNAL, STOPPED_EXIT_CODE, resumed_epoch, stopped_epoch

STOP_WAIT_S = 90.0  # how long a stopping child may take (one iteration and a checkpoint) before it is killed
POLL_S = 0.2
_RUNNING: list[Child] = []  # the children running now, in this process


@dataclass
class Child:
    """A running ``nnUNetv2_train``; its output goes line by line to its log."""

    process: subprocess.Popen
    reader: threading.Thread
    tail: deque = field(default_factory=lambda: deque(maxlen=40))
    resumed_at: int | None = None  # the epoch the trainer said it resumed at
    stopped_at: int | str | None = None  # where the trainer said --c resumes when it stopped (stopped_epoch)

    def read(self, log) -> None:
        for line in self.process.stdout:
            log.write(line)
            log.flush()
            self.tail.append(line)
            self.resumed_at = _first(resumed_epoch(line), self.resumed_at)
            self.stopped_at = _first(stopped_epoch(line), self.stopped_at)

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The exit code, once the child has ended and its output is in the log; None if it
        runs on after ``timeout_s``. Polls: a blocking ``Popen.wait`` holds a lock that a signal
        handler (submitit's ``checkpoint``) waiting for the same child would wait for forever."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (code := self.process.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(POLL_S)
        self.reader.join(timeout=10)
        return code

    def stop(self, timeout_s: float | None = STOP_WAIT_S) -> int | None:
        """Forwards SIGUSR1, waits for the child's checkpoint, kills it after ``timeout_s``."""
        if self.process.poll() is None:
            self.process.send_signal(FORWARDED_SIGNAL)
        code = self.wait(timeout_s)
        return self.kill() if code is None else code

    def kill(self) -> int | None:
        if self.process.poll() is None:
            self.process.kill()
        return self.wait(10)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a child ran; ``child`` has ended (stopped gracefully, or killed)."""

    def __init__(self, child: Child):
        super().__init__()
        self.child = child


def _first(new: int | str | None, old: int | str | None) -> int | str | None:
    return new if new is not None else old


def _ignore_sweep_signals() -> None:
    """In the child, between fork and exec (ignored signals stay ignored across exec), so no signal
    can reach it before: nnUNetv2_train sets its own handlers only once training starts. Safe beside
    the sweep's threads (subprocess's caveat): ``signal.signal`` takes no lock a thread could hold."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def start_child(args: list[str], env: dict[str, str] | None, log) -> Child:
    """Starts ``args`` with its output appended to the open file ``log``."""
    process = subprocess.Popen(command_line(args), env=command_env(env), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, preexec_fn=_ignore_sweep_signals)
    child = Child(process, threading.Thread(target=lambda: child.read(log), daemon=True))
    child.reader.start()
    return child


def run_child(args: list[str], env: dict[str, str] | None, log_path: str) -> Child:
    """Runs ``args`` to its end and returns it (``process.returncode``: 0, STOPPED_EXIT_CODE
    when the trainer stopped gracefully, or its failure's). On Ctrl-C (KeyboardInterrupt) it
    forwards SIGUSR1 and waits for the child's checkpoint, then raises :class:`Interrupted`;
    a second Ctrl-C kills the child."""
    with open(log_path, "a") as log:
        child = start_child(args, env, log)
        _RUNNING.append(child)
        try:
            try:
                child.wait()
            except KeyboardInterrupt:
                print("\nCtrl-C: stopping the training at its next iteration (its checkpoint is written); "
                      "Ctrl-C again kills it", file=sys.stderr, flush=True)
                try:
                    child.stop(timeout_s=None)
                except KeyboardInterrupt:
                    child.kill()
                raise Interrupted(child) from None
        finally:
            _RUNNING.remove(child)
    return child


def stop_children(timeout_s: float = STOP_WAIT_S) -> list[Child]:
    """Stops every child this process runs (:meth:`Child.stop`) and returns them, ended. For
    submitit's ``checkpoint``, which runs in its signal handler while :func:`run_child` waits."""
    children = list(_RUNNING)
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(FORWARDED_SIGNAL)
    for child in children:
        child.stop(timeout_s)
    return children


def kill_children() -> None:
    """Kills every child this process runs (a second Ctrl-C)."""
    for child in list(_RUNNING):
        child.process.kill()


def stopped(child: Child) -> bool:
    return child.process.returncode == STOPPED_EXIT_CODE
