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
