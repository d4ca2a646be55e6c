"""The isolating child of the benchmarks: its result, or the real reason it has none."""

import os
import signal

import pytest
import torch

from benchmarks.isolate import death_message, describe_failure, is_out_of_memory, run_isolated

# children are forked from a fresh server process: their targets must be importable functions at the top of a module


def returns(value):
    return {"value": value}


def raises_type_error():
    raise TypeError("bad\nsecond line")


def allocates(gib):
    return {"size": len(bytearray(gib * 2**30))}


def kills_itself(signum):
    os.kill(os.getpid(), signum)


def exits(code):
    os._exit(code)


def environment_value(name):
    return {"value": os.environ.get(name)}


def test_a_child_returns_its_result():
    assert run_isolated(returns, 3) == {"value": 3}


def test_a_child_runs_in_this_process_environment_as_it_is_now(monkeypatch):
    """The children's server starts once; each child still takes the environment of its call."""
    run_isolated(returns, 0)  # the server runs from here on
    monkeypatch.setenv("NNUNETV2_SEGRESMAMBA_ISOLATE_CHECK", "set after the server started")
    assert run_isolated(environment_value, "NNUNETV2_SEGRESMAMBA_ISOLATE_CHECK") == {
        "value": "set after the server started"}


@pytest.mark.parametrize(("target", "args", "cap", "error"), [
    (raises_type_error, (), None, "TypeError: bad"),
    (allocates, (128,), 64, "out of memory: MemoryError"),  # 128 GiB under a 64 GiB address-space cap
    (kills_itself, (signal.SIGKILL,), None,
     "out of memory: the measuring process was killed by signal 9 (SIGKILL), as the kernel's OOM killer does"),
    (exits, (3,), None, "the measuring process exited with code 3 without a result"),
])
def test_a_failed_child_reports_the_real_reason(target, args, cap, error):
    assert run_isolated(target, *args, memory_cap_gib=cap) == {"error": error}


def test_only_failures_to_allocate_read_as_out_of_memory():
    with pytest.raises(RuntimeError) as cpu_allocator:  # what the benchmarks' address-space cap gives
        torch.empty(2**50, dtype=torch.uint8)
    assert describe_failure(cpu_allocator.value).startswith("out of memory: RuntimeError: [enforce fail")
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ImportError("No module named 'mambapy'"))
    assert describe_failure(ImportError("No module named 'mambapy'")) == "ImportError: No module named 'mambapy'"
    assert describe_failure(KeyError()) == "KeyError"


def test_death_messages_name_the_signal():
    assert death_message(-signal.SIGSEGV) == "the measuring process was killed by signal 11 (SIGSEGV)"
    assert death_message(-signal.SIGTERM) == "the measuring process was killed by signal 15 (SIGTERM)"
    assert death_message(0) == "the measuring process exited with code 0 without a result"


def test_a_cap_must_be_positive():
    with pytest.raises(ValueError, match="memory_cap_gib must be positive"):
        run_isolated(returns, 1, memory_cap_gib=0)
