from __future__ import annotations

import os

import pytest
import torch

# The test networks are tiny: one thread is as fast and never oversubscribes a busy machine (2 threads beside
# another process made steps 10-20x slower here). MEDOOD_TEST_THREADS overrides it.
torch.set_num_threads(int(os.environ.get("MEDOOD_TEST_THREADS", "1")))
os.environ.setdefault("MEDOOD_PROGRESS", "0")  # no progress bars in test logs


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
