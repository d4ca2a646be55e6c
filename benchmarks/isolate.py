"""One measurement per fresh child process (forked from a server that has imported torch), and
the peak memory of a block of work.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident set at the start, so
it covers every allocation, PyTorch's and the allocator's slack included. On the CPU,
:func:`cpu_tensor_peak_mib` also gives the tensors' own peak, as a GPU's allocator counts it. A child that fails
gives an ``error`` row instead of stopping the benchmark: the exception's type and message, or
the signal or exit code that ended it, prefixed with ``"out of memory: "`` when the failure is
one (see :func:`is_out_of_memory` and :func:`death_message`).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue as queue_module
import resource
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from nnunetv2_segresmamba.tools.pipeline import describe_error


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


def cpu_tensor_peak_mib(work: Callable[[], None], held_bytes: int) -> float:
    """The peak of the bytes held by CPU tensors during one call of ``work``: ``held_bytes``, the
    tensors allocated before that it keeps (weights, optimizer state, inputs), plus the largest
    net allocation within it, from torch's profiler. What ``torch.cuda.max_memory_allocated``
    counts on a GPU: no allocator slack, no libraries."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [(e["args"]["Total Allocated"], e["args"]["Bytes"]) for e in events if e.get("name") == "[memory]"]
    if not totals:
        raise RuntimeError("torch's profiler recorded no CPU allocation")
    start = totals[0][0] - totals[0][1]  # its count before the first allocation it recorded
    return (held_bytes + max(total for total, _ in totals) - start) / 2**20


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux >= 4.0: VmHWM := VmRSS


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}; CPU peak memory needs Linux")


OUT_OF_MEMORY = "out of memory"
OOM_MESSAGES = ("out of memory", "can't allocate memory")  # CUDA's and other devices', PyTorch's CPU allocator's


def run_isolated(target: Callable[..., dict], *args, memory_cap_gib: float | None = None) -> dict:
    """``target(*args)`` in a fresh child process (:func:`_context`): its dict, or ``{"error": ...}``
    if it failed or died.

    Args:
        target: a picklable function (defined at a module's top level) returning a dict.
        args: picklable arguments of ``target``.
        memory_cap_gib: limits the child's address space (CPU runs), so an oversized case fails
            with an error row instead of waking the kernel's OOM killer.

    The error is :func:`describe_failure` of the child's exception, or :func:`death_message`
    of a child that ended without a result (killed by a signal, or exited).
    """
    if memory_cap_gib is not None and memory_cap_gib <= 0:
        raise ValueError(f"memory_cap_gib must be positive (or None for no cap), got {memory_cap_gib}")
    ctx = _context(target)
    results = ctx.Queue()
    child = ctx.Process(target=_child_main, args=(target, args, results, memory_cap_gib, dict(os.environ)))
    child.start()
    while True:
        try:
            result = results.get(timeout=1)
            break
        except queue_module.Empty:
            if not child.is_alive():
                result = _left_behind(results)
                if result is None:
                    result = {"error": death_message(child.exitcode)}
                break
    child.join()
    return result


def _context(target: Callable) -> mp.context.BaseContext:
    """Children forked from a server process that imported torch and the first call's ``target``
    module (a benchmark measures with one target), and nothing else (no thread, no CUDA context):
    each child is as fresh as a spawned one without paying torch's import again (seconds a child
    on a CPU). The server starts at the first call; each child takes this process's environment
    as it is at its own start, as a spawned child would (:func:`_child_main`)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", target.__module__])  # read when the server starts
    return ctx


def _left_behind(results: mp.Queue) -> dict | None:
    """A result the child put just before it ended (still in the pipe when we last looked), or None."""
    try:
        return results.get(timeout=1)
    except queue_module.Empty:
        return None


def _child_main(target: Callable[..., dict], args: tuple, results: mp.Queue, memory_cap_gib: float | None,
                environ: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(environ)  # the parent's now, not the server's from its start
    if memory_cap_gib is not None:
        cap = int(memory_cap_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        results.put(target(*args))
    except Exception as err:  # any failure becomes the row's error, so the benchmark goes on
        results.put({"error": describe_failure(err)})


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a failure to allocate: a MemoryError, torch's OutOfMemoryError (any
    device), or a RuntimeError saying "out of memory" or, from PyTorch's CPU allocator (as under
    ``memory_cap_gib``), "can't allocate memory"."""
    if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):  # torch.OutOfMemoryError from torch 2.5
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in OOM_MESSAGES)


def describe_failure(err: BaseException) -> str:
    """``"Type: first line of the message"``, prefixed with ``"out of memory: "`` when it is one."""
    text = describe_error(err)
    return f"{OUT_OF_MEMORY}: {text}" if is_out_of_memory(err) else text


def death_message(exitcode: int | None) -> str:
    """Why a child ended without a result, from its ``exitcode`` (minus the signal number when a
    signal killed it). Only SIGKILL, what the kernel's OOM killer sends, reads as out of memory."""
    if exitcode is None or exitcode >= 0:
        return f"the measuring process exited with code {exitcode} without a result"
    number = -exitcode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = "unknown signal"
    text = f"the measuring process was killed by signal {number} ({name})"
    if number == signal.SIGKILL:
        return f"{OUT_OF_MEMORY}: {text}, as the kernel's OOM killer does"
    return text


CPU_MEMORY_SHARE = 0.7  # of physical memory, for one CPU child


def default_memory_cap_gib() -> float:
    """Address-space cap for CPU children: their share of physical memory plus the ~3.5 GiB torch maps at import."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return CPU_MEMORY_SHARE * physical + 3.5
