from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("MEDOOD_PROGRESS", "0")  # no progress bars in test logs


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
