"""One network's training step and inference, timed, with the step's peak memory.

A training step is forward, cross-entropy against random labels, backward and an AdamW
step, the same for every network, so the numbers compare networks rather than recipes.
AMP is fp16 autocast with a GradScaler on CUDA and bf16 autocast on CPU.

Peak training memory is measured from before the network is built: weights, gradients,
AdamW's two moments, activations and the allocator's slack (see :mod:`benchmarks.isolate`).
Times are medians over ``repeats`` after one warm-up. Inference is one patch at batch 1,
no grad, in the same precision. Patches are 2D or 3D: x (B, C, *size), labels (B, *size).
Each row names the scan paths the network ran (``tom_paths``: "numba", "triton", "cuda" or
"pure", of its ToM or SS2D layers; empty for a network without either), read from the
backends' path log, so that a target can tell a fused-kernel run from a pure one.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.isolate import PeakMemory
from nnunetv2_segresmamba import registry
from nnunetv2_segresmamba.operators.backends import PATH_LOG_VAR

PRECISIONS = ("fp32", "amp")


def measure_network(network: str, in_channels: int, classes: int, size: list[int], batch: int, precision: str,
                    device: str, repeats: int, with_inference: bool) -> dict:
    """Runs in a child process (:func:`benchmarks.isolate.run_isolated`); returns one result row."""
    with recorded_tom_paths() as paths:
        row = _measure(network, in_channels, classes, size, batch, precision, device, repeats, with_inference)
        return {**row, "tom_paths": paths()}


def _measure(network: str, in_channels: int, classes: int, size: list[int], batch: int, precision: str,
             device: str, repeats: int, with_inference: bool) -> dict:
    torch.manual_seed(0)
    memory = PeakMemory(device)
    memory.reset()
    net = registry.network(network).build(in_channels, classes, size).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x, target = random_batch(batch, in_channels, classes, size, device)
    train_step = training_step(net, optimizer, x, target, device, precision)
    row = {"train_step_s": median_time(train_step, device, repeats), "peak_train_mib": memory.mib()}
    if with_inference:
        del optimizer
        net.zero_grad(set_to_none=True)
        net.eval()
        sample = x[:1]

        def infer() -> None:
            with torch.inference_mode(), autocast(device, precision):
                net(sample)

        row["inference_s"] = median_time(infer, device, repeats)
    return row


def random_batch(batch: int, in_channels: int, classes: int, size: Sequence[int], device: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs x (batch, in_channels, *size), normal, and labels (batch, *size) in [0, classes)."""
    x = torch.randn(batch, in_channels, *size, device=device)
    return x, torch.randint(0, classes, (batch, *size), device=device)


def training_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor,
                  device: str, precision: str) -> Callable[[], None]:
    """The benchmarks' training step, as a function to call once per step: forward ``x`` in
    ``precision`` (:func:`autocast`), cross-entropy against ``target``, backward and ``optimizer``'s
    step, through a GradScaler with AMP on CUDA (a no-op otherwise)."""
    scaler = torch.amp.GradScaler(device, enabled=precision == "amp" and device == "cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = F.cross_entropy(net(x), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


@contextlib.contextmanager
def recorded_tom_paths() -> Iterator[Callable[[], list[str]]]:
    """Within the block, the ToM layers log the paths they choose (see
    :mod:`nnunetv2_segresmamba.operators.backends`) to a file of their own; yields a function
    giving the sorted paths logged so far. Restores the environment after the block."""
    previous = os.environ.get(PATH_LOG_VAR)
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "paths.jsonl")
        os.environ[PATH_LOG_VAR] = log

        def paths() -> list[str]:
            if not os.path.exists(log):
                return []
            with open(log) as f:
                return sorted({json.loads(line)["path"] for line in f if line.strip()})

        try:
            yield paths
        finally:
            if previous is None:
                del os.environ[PATH_LOG_VAR]
            else:
                os.environ[PATH_LOG_VAR] = previous


def autocast(device: str, precision: str) -> AbstractContextManager:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    return torch.autocast(device, dtype=dtype, enabled=precision == "amp")


def median_time(fn: Callable[[], None], device: str, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)
