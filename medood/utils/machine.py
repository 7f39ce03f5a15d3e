"""A one-line description of the machine, recorded by benchmarks next to their figures."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def paired_time_ratio(base: Callable[[], Any], other: Callable[[], Any], repeats: int) -> tuple[float, float, float]:
    """Median of ``time(other) / time(base)`` over interleaved pairs, after one warm-up of each.

    Interleaving makes a load spike on a shared machine hit both halves of a pair alike. Returns
    ``(ratio, median base seconds, median other seconds)``.
    """
    base()
    other()
    ratios, t_base, t_other = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        base()
        mid = time.perf_counter()
        other()
        end = time.perf_counter()
        t_base.append(mid - start)
        t_other.append(end - mid)
        ratios.append((end - mid) / (mid - start))
    return statistics.median(ratios), statistics.median(t_base), statistics.median(t_other)
