"""Where no GPU is present, Triton kernels run in Triton's CPU interpreter. The variable must
be set before Triton compiles anything, hence here. nnU-Net's pools of export and evaluation
workers get one process each (its default, 8 spawned processes that each import torch, costs
more on 2 cores than the tiny cases they export), and under pytest-xdist OpenMP's idle threads
sleep instead of spinning (two trainings side by side on 2 cores, each with 2 threads: 18 s,
against 21 s spinning, 33 s with one thread each, 32 s one after the other). And the planned
datasets that several modules share, and the numba kernels compiled once in the background."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("nnUNet_def_n_proc", "1")  # read when nnunetv2.configuration is imported
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: the workers' processes share the cores
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep rather than spin

import pytest
import torch

from tests.workspaces import drop_checkpoints, plan_anisotropic, preprocess_e2e

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The slowest modules (minutes each on 2 cores), collected first: with pytest-xdist's
# --dist loadfile --no-loadscope-reorder each starts on a worker of its own, and the quick
# modules fill in around them, instead of two of them queueing on one worker at the end.
SLOWEST_MODULES = ("test_e2e.py", "test_e2e_family.py", "test_benchmarks.py", "test_sweeps.py")


KERNEL_WARMUP = pytest.StashKey[subprocess.Popen]()


def pytest_sessionstart(session: pytest.Session) -> None:
    """tests/warm_kernels.py in the background, in the controlling process only: the numba
    kernels compile once, while the first modules plan their datasets."""
    if not os.environ.get("PYTEST_XDIST_WORKER") and importlib.util.find_spec("numba"):
        session.config.stash[KERNEL_WARMUP] = subprocess.Popen(
            [sys.executable, "-m", "tests.warm_kernels"], cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pytest_sessionfinish(session: pytest.Session) -> None:
    warmup = session.config.stash.get(KERNEL_WARMUP, None)
    if warmup is not None:
        warmup.wait()


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its order


@pytest.fixture(scope="session")
def anisotropic_workspace(tmp_path_factory):
    """tests.workspaces.ANISOTROPIC, fingerprinted and planned by nnU-Net (default planner). Its
    plans are read, never rewritten: test_cascade.py adds its cascade on a copy."""
    return plan_anisotropic(str(tmp_path_factory.mktemp("anisotropic")))


@pytest.fixture(scope="module")
def e2e_workspace(tmp_path_factory, request):
    """tests.workspaces.E2E, planned and preprocessed for 3d_fullres, once for each module that
    asks (test_e2e.py and test_e2e_family.py, which pytest-xdist runs side by side), after
    nnU-Net's check of the dataset where the module sets ``VERIFY_DATASET_INTEGRITY``; the
    checkpoints its runs wrote are deleted when the module is done."""
    verify = getattr(request.module, "VERIFY_DATASET_INTEGRITY", False)
    ws = preprocess_e2e(str(tmp_path_factory.mktemp("e2e")), verify)
    yield ws
    drop_checkpoints(ws.root)
