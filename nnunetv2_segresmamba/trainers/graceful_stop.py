"""A trainer that stops cleanly on SIGUSR1 or SIGTERM (SLURM's time-limit warning, preemption):
the signal handler only notes the signal; after the training iteration in progress (or at the
end of the epoch, when the signal came during its validation) the trainer writes
``checkpoint_latest.pth`` (atomically, :meth:`ComparisonTrainerBase.save_checkpoint`) so that
``--c`` resumes at the epoch in progress, shuts nnU-Net's data loader workers down, logs
:func:`~nnunetv2_segresmamba.tools.stopping.stopped_line` and exits with
:data:`~nnunetv2_segresmamba.tools.stopping.STOPPED_EXIT_CODE`. A signal during the validation
after the last epoch stops it at once: ``checkpoint_final.pth`` is written, the half-done
validation's ``summary.json`` removed, and ``--c`` (or ``--val``) redoes the validation.

Lost per stop: the iterations of the interrupted epoch (redone on resume; their updates stay in
the weights), never more than one epoch.
"""

from __future__ import annotations

import os
import signal
import threading

import torch
import torch.distributed as dist
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

from nnunetv2_segresmamba.tools.layout import VALIDATION_SUMMARY
from nnunetv2_segresmamba.tools.stopping import (
    STOP_SIGNALS,
    STOPPED_EXIT_CODE,
    resumed_line,
    stopped_in_validation_line,
    stopped_line,
)

CHECKPOINT_LATEST = "checkpoint_latest.pth"  # nnU-Net's name, which --c reads


class StopCheckSchedule:
    """Mixin: a run long enough for two stop signals to land in mid-training (3 epochs x 4
    iterations, 1 validation iteration) that writes ``checkpoint_latest.pth`` only on a graceful stop (every
    1000 epochs otherwise), unseeded so that nnU-Net's data loader worker processes run: whatever
    ``--c`` resumes from, only the graceful stop can have written it."""

    comparison_num_epochs = 3
    comparison_iterations_per_epoch = 4
    comparison_val_iterations_per_epoch = 1
    comparison_save_every = 1000
    seed = None


class StopRequested(BaseException):
    """Raised by the signal handler during the final validation only (BaseException: no
    ``except Exception`` of nnU-Net's swallows it)."""


class GracefulStop:
    """Mixin of :class:`~nnunetv2_segresmamba.trainers.base.ComparisonTrainerBase`, before
    nnU-Net's trainer in its bases. Under DDP every rank stops at the same iteration: the ranks
    agree (all-reduce, max) after each one."""

    _stop_signal: str | None = None  # the first stop signal's name, once one came
    _raise_on_stop = False  # True during the final validation: the handler raises StopRequested

    def install_stop_handlers(self) -> None:
        """Handles :data:`~nnunetv2_segresmamba.tools.stopping.STOP_SIGNALS` from now on. Python
        lets only the main thread do this; elsewhere the trainer logs that it cannot stop cleanly.
        Worker processes forked later inherit the handler: a signal sent to the whole process
        group (SLURM's) leaves them alive until the trainer shuts them down."""
        if threading.current_thread() is not threading.main_thread():
            self.print_to_log_file("not in the main thread: no graceful stop on SIGUSR1/SIGTERM")
            return
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, frame) -> None:
        """Notes the first signal; nothing else (no I/O: the main thread may be inside a write). A
        second signal changes nothing, so it cannot interrupt a checkpoint being written."""
        if self._stop_signal is not None:
            return
        self._stop_signal = signal.Signals(signum).name
        if self._raise_on_stop:
            raise StopRequested

    def stop_agreed(self) -> bool:
        """Whether a stop signal came; under DDP, to any rank (so all stop at the same step)."""
        requested = self._stop_signal is not None
        if not self.is_ddp:
            return requested
        flag = torch.tensor([int(requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self._stop_signal is None:
            self._stop_signal = "another rank's signal"
        return bool(flag.item())

    def on_train_start(self) -> None:
        self.install_stop_handlers()  # before nnU-Net forks its data loader workers
        super().on_train_start()
        if self.current_epoch > 0:
            self.print_to_log_file(resumed_line(self.current_epoch))

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        if self.stop_agreed():
            self._stop_training(self.current_epoch)  # the epoch in progress is redone
        return result

    def on_epoch_end(self) -> None:
        super().on_epoch_end()  # counts the epoch done
        if self.current_epoch < self.num_epochs and self.stop_agreed():
            self._stop_training(self.current_epoch)

    def _stop_training(self, resume_epoch: int) -> None:
        """Writes the checkpoint from which ``--c`` starts epoch ``resume_epoch``, shuts the data
        loaders down and exits with STOPPED_EXIT_CODE."""
        self._drop_logs_from(resume_epoch)
        self.current_epoch = resume_epoch - 1  # save_checkpoint records current_epoch + 1
        self.save_checkpoint(os.path.join(self.output_folder, CHECKPOINT_LATEST))
        self.current_epoch = resume_epoch
        self._shut_down_dataloaders()
        self.print_to_log_file(stopped_line(self._stop_signal, resume_epoch))
        raise SystemExit(STOPPED_EXIT_CODE)

    def _drop_logs_from(self, epoch: int) -> None:
        """Drops what nnU-Net's logger holds of ``epoch`` and later (the interrupted epoch's start
        time and learning rate), so the resumed run logs that epoch afresh."""
        for values in self.logger.local_logger.my_fantastic_logging.values():
            del values[epoch:]

    def _shut_down_dataloaders(self) -> None:
        """nnU-Net's shutdown of its data loader workers (as in its ``on_train_end``)."""
        for loader in (self.dataloader_train, self.dataloader_val):
            if isinstance(loader, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
                loader._finish()

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """nnU-Net's, stopped at once by a stop signal: the half-written results are not taken as
        done (``summary.json``, which the sweep takes as done, is removed); ``--c`` or ``--val``
        redoes the validation from ``checkpoint_final.pth``."""
        self.install_stop_handlers()  # also for --val alone
        self._raise_on_stop = True
        try:
            if self._stop_signal is not None:  # came while checkpoint_final.pth was written
                raise StopRequested
            super().perform_actual_validation(save_probabilities)
        except StopRequested:
            self._raise_on_stop = False
            summary = os.path.join(self.output_folder, VALIDATION_SUMMARY)
            if self.local_rank == 0 and os.path.exists(summary):
                os.remove(summary)
            self.print_to_log_file(stopped_in_validation_line(self._stop_signal))
            raise SystemExit(STOPPED_EXIT_CODE) from None
        finally:
            self._raise_on_stop = False
