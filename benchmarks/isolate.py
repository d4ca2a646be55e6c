"""One measurement per fresh child process, and the peak memory of a block of work.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident set at the start, so
it covers every allocation, PyTorch's and the allocator's slack included. A child that runs
out of memory (or is killed) gives an ``error`` row instead of stopping the benchmark.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import resource
from collections.abc import Callable

import torch


class PeakMemory:
    """``reset()`` marks the start; ``mib()`` is the peak since then, above the start."""

    def __init__(self, device: str):
        self.device = device
        self.base = 0

    def reset(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            _reset_peak_rss()
            self.base = _status_kib("VmRSS") * 1024

    def mib(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _status_kib("VmHWM") * 1024
        return max(peak - self.base, 0) / 2**20


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux >= 4.0: VmHWM := VmRSS


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}; CPU peak memory needs Linux")


def run_isolated(target: Callable[..., dict], *args, memory_cap_gib: float | None = None) -> dict:
    """``target(*args)`` in a spawned child; its dict, or ``{"error": ...}`` if it failed or died.

    ``memory_cap_gib`` limits the child's address space (CPU runs), so an oversized case fails
    with an error row instead of waking the kernel's OOM killer.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=_child_main, args=(target, args, results, memory_cap_gib))
    child.start()
    while True:
        try:
            result = results.get(timeout=1)
            break
        except queue_module.Empty:
            if not child.is_alive():
                result = {"error": f"the measuring process died (exit code {child.exitcode}); likely out of memory"}
                break
    child.join()
    return result


def _child_main(target: Callable[..., dict], args: tuple, results: mp.Queue, memory_cap_gib: float | None) -> None:
    if memory_cap_gib:
        cap = int(memory_cap_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        results.put(target(*args))
    except (RuntimeError, MemoryError, ImportError, ValueError) as err:
        results.put({"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"})


CPU_MEMORY_SHARE = 0.7  # of physical memory, for one CPU child


def default_memory_cap_gib() -> float:
    """Address-space cap for CPU children: their share of physical memory plus the ~3.5 GiB torch maps at import."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return CPU_MEMORY_SHARE * physical + 3.5
