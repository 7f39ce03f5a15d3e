from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from medood.handlers import ProgressBar


def test_progress_bar_shows_the_loss_and_can_be_disabled(capsys: pytest.CaptureFixture[str]) -> None:
    engine = Engine(lambda e, b: {"loss": torch.tensor(0.123)})
    ProgressBar("loss", enabled=True).attach(engine)
    engine.run([0, 1, 2], max_epochs=1)
    assert "loss=0.123" in capsys.readouterr().err
    quiet = Engine(lambda e, b: {"loss": torch.tensor(1.0)})
    ProgressBar("loss", enabled=False).attach(quiet)
    quiet.run([0], max_epochs=1)
    assert "loss" not in capsys.readouterr().err


def test_progress_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert ProgressBar().enabled is False
    monkeypatch.delenv("CI")
    monkeypatch.setenv("MEDOOD_PROGRESS", "1")
    assert ProgressBar().enabled is True
