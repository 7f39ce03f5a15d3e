"""A one-line description of the machine, recorded by benchmarks next to their figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def describe_machine() -> str:
    """CPU model, core count, torch version and threads, accelerator, and the load average at call time."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU only"
    load = f", load average {os.getloadavg()[0]:.1f} at start" if hasattr(os, "getloadavg") else ""
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{device}{load}"
    )
