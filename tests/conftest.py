from __future__ import annotations

import os

import pytest
import torch

# MEDOOD_TEST_THREADS=1 keeps the suite from thrashing a training job running beside it
torch.set_num_threads(int(os.environ.get("MEDOOD_TEST_THREADS", min(2, os.cpu_count() or 1))))
os.environ.setdefault("MEDOOD_PROGRESS", "0")  # no progress bars in test logs


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
