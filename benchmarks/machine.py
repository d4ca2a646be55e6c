"""Describes the machine a benchmark ran on, and names a run's output folder."""

from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"  # the committed results, written only with --out
RUNS = RESULTS / "runs"  # the default outputs, one new folder per run (git ignores them)


def describe() -> dict:
    """CPU model, core count, torch version and, with CUDA, the GPU and CUDA version."""
    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return info


def slug(machine: dict) -> str:
    """A folder name for results: the GPU's name, else ``cpu-<cores>core``."""
    if machine.get("gpu"):
        return re.sub(r"[^a-z0-9]+", "-", machine["gpu"].lower()).strip("-")
    return f"cpu-{machine['cores']}core"


def new_run_folder(machine: dict, runs: Path = RUNS) -> Path:
    """A new, empty folder for one run's results when ``--out`` names none:
    ``runs/<YYYYmmdd-HHMMSS>-<slug>``, with ``-2``, ``-3``... if a run of the same second took it.
    Never an existing folder, so that no default run replaces results."""
    stem = f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{slug(machine)}"
    runs.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = runs / (stem if n == 1 else f"{stem}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"{runs}: a thousand runs named {stem}; remove some")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
