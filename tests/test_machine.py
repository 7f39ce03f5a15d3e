"""The machine line that benchmarks record next to their figures."""

from __future__ import annotations

import os

import torch

from medood.utils.machine import describe_machine


def test_describe_machine_names_cores_torch_and_device() -> None:
    line = describe_machine()
    assert f"{os.cpu_count()} cores" in line
    assert f"torch {torch.__version__}" in line
    assert ("CUDA" in line) == torch.cuda.is_available()


def test_paired_time_ratio_interleaves_after_one_warm_up() -> None:
    from medood.utils.machine import paired_time_ratio

    calls: list[str] = []
    ratio, t_base, t_other = paired_time_ratio(lambda: calls.append("a"), lambda: calls.append("b"), 3)
    assert calls == ["a", "b"] * 4, "one warm-up of each, then base/other pairs"
    assert ratio > 0 and t_base > 0 and t_other > 0
