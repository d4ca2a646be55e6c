"""Describes the machine a benchmark ran on."""

from __future__ import annotations

import os
import platform
import re

import torch


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


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
