"""Describes the machine a benchmark ran on."""

from __future__ import annotations

import os
import platform

import torch


def describe() -> dict:
    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
