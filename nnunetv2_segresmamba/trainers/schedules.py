"""Learning-rate schedules stepped by epoch, like nnU-Net's PolyLRScheduler."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import _LRScheduler


class CosineAnnealingScheduler(_LRScheduler):
    """lr = min_lr + 0.5 * (initial_lr - min_lr) * (1 + cos(pi * step / max_steps)), set in closed
    form (torch's CosineAnnealingLR with ``eta_min=min_lr``, stepped by epoch).

    nnU-Net calls ``step(current_epoch)``; the closed form makes resuming with ``--c`` exact.
    """

    def __init__(self, optimizer: Optimizer, initial_lr: float, max_steps: int, current_step: int | None = None,
                 min_lr: float = 0.0):
        self.optimizer = optimizer
        self.initial_lr, self.min_lr = initial_lr, min_lr
        self.max_steps = max_steps
        self.ctr = 0
        super().__init__(optimizer, current_step if current_step is not None else -1)

    def step(self, current_step: int | None = None) -> None:
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        progress = min(current_step, self.max_steps) / max(self.max_steps, 1)
        new_lr = self.min_lr + 0.5 * (self.initial_lr - self.min_lr) * (1 + math.cos(math.pi * progress))
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = new_lr
        self._last_lr = [new_lr for _ in self.optimizer.param_groups]
