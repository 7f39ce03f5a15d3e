"""TrainingCheckpoint: an interrupted training resumes from the saved iteration (model, optimizer, schedule, trainer);
the mixed-precision switch keeps the CPU in float32."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from medood.engines import TrainingCheckpoint
from medood.engines.distributed import amp_enabled, ddp, rank_zero_handlers, sampler

BATCHES = [{"image": torch.randn(4, 3, generator=torch.Generator().manual_seed(i)), "label": torch.tensor([0, 1, 0, 1])}
           for i in range(5)]  # fmt: skip


def _run(folder: Path, resume: bool, stop_at: int | None = None, epochs: int = 2) -> tuple[SupervisedTrainer, list]:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trainer = SupervisedTrainer("cpu", epochs, BATCHES, net, opt, torch.nn.CrossEntropyLoss(), decollate=False)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _e: sched.step())
    seen: list[int] = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(e.state.iteration))
    if stop_at is not None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    objects = {"model": net, "optimizer": opt, "lr_scheduler": sched}
    TrainingCheckpoint(folder, "last", objects, resume=resume, every_iterations=3).attach(trainer)
    trainer.run()
    return trainer, seen


def test_resume_continues_from_the_saved_iteration(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="to resume from"):
        _run(tmp_path / "none", resume=True)
    _, seen = _run(tmp_path, resume=False, stop_at=7)  # interrupted in epoch 2; the last save was iteration 6
    assert seen[-1] == 7 and sorted(p.name for p in tmp_path.glob("last*.pt")) == ["last_checkpoint_6.pt"]
    saved = torch.load(tmp_path / "last_checkpoint_6.pt", weights_only=True)
    assert saved["trainer"]["iteration"] == 6 and saved["optimizer"]["state"][0]["step"] == 6
    assert saved["lr_scheduler"]["last_epoch"] == 1  # one epoch completed

    trainer, seen = _run(tmp_path, resume=True)
    assert seen == [7, 8, 9, 10], "the 4 iterations left of epoch 2, nothing before"
    assert trainer.state.iteration == 10 and trainer.state.epoch == 2
    assert trainer.optimizer.state_dict()["state"][0]["step"] == 10  # Adam's moments continued
    assert [p.name for p in tmp_path.glob("last*.pt")] == ["last_checkpoint_10.pt"]  # the stale file removed


def test_single_process_helpers_are_no_ops_and_amp_stays_off_on_cpu(caplog: pytest.LogCaptureFixture) -> None:
    net = torch.nn.BatchNorm1d(3)
    assert ddp(net, sync_batchnorm=True) is net and sampler([1, 2, 3]) is None
    handlers = [object()]
    assert rank_zero_handlers(handlers) == handlers and rank_zero_handlers(None) is None
    with caplog.at_level(logging.INFO, logger="medood.engines.distributed"):
        assert amp_enabled(True, "cpu") is False and amp_enabled(False, torch.device("cpu")) is False
    assert "amp: true ignored on cpu" in caplog.text
    assert amp_enabled(True, "cuda") is True


def test_flags_given_as_command_line_text() -> None:
    assert amp_enabled("false", "cuda") is False and amp_enabled("True", "cuda") is True
    net = torch.nn.BatchNorm1d(3)
    assert ddp(net, sync_batchnorm="false", find_unused_parameters="off") is net
    with pytest.raises(ValueError, match="sync_batchnorm must be true or false"):
        ddp(net, sync_batchnorm="flase")
    with pytest.raises(ValueError, match="resume must be true or false"):
        TrainingCheckpoint(".", "last", {}, resume="ture")
    assert TrainingCheckpoint(".", "last", {}, resume="FALSE").resume is False


def test_train_classifier_resumes_with_its_best_weights_so_far(tmp_path: Path) -> None:
    from medood.engines.classifier import TrainSettings, train_classifier
    from tests.helpers import toy

    loader, val = toy.id_loader(2, n=24, batch_size=8), toy.id_loader(2, n=12, batch_size=6, seed=2)
    torch.manual_seed(0)
    first = train_classifier(toy.TinyClassifier(2), loader, val, TrainSettings(epochs=1), resume_dir=tmp_path,
                             progress=False)  # fmt: skip
    assert [p.name for p in tmp_path.glob("classifier_last*.pt")] == ["classifier_last_checkpoint_3.pt"]
    torch.manual_seed(1)  # a different initialisation: the resumed run must start from the saved weights
    second = train_classifier(toy.TinyClassifier(2), loader, val, TrainSettings(epochs=2), resume_dir=tmp_path,
                              resume=True, progress=False)  # fmt: skip
    assert [e for e, _ in second.history] == [1, 2] and second.history[0] == first.history[0]
    assert [p.name for p in tmp_path.glob("classifier_last*.pt")] == ["classifier_last_checkpoint_6.pt"]
    with pytest.raises(ValueError, match="resume_dir"):
        train_classifier(toy.TinyClassifier(2), loader, val, TrainSettings(epochs=1), resume=True, progress=False)
