"""The reusable classifier trainer (medood.engines.classifier) on tiny 2D / 3D synthetic class data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from torch import Tensor, nn

from medood.data.errors import DataError
from medood.engines.classifier import (
    TrainSettings,
    classifier_engines,
    final_logits,
    load_classifier,
    train_classifier,
)
from medood.losses.classification import MultiExitLoss
from medood.networks.classifiers import build_classifier
from medood.utils.checkpoints import load_checkpoint, save_checkpoint
from tests.helpers.class_folders import one_thread
from tests.helpers.toy import TinyClassifier, blob_images


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _loader(spatial_dims: int, n: int, seed: int, shuffle: bool = False, size: int = 16) -> DataLoader:
    x, y = blob_images(spatial_dims, n, seed=seed, size=size)
    items = [{"image": x[i], "label": int(y[i])} for i in range(n)]
    return DataLoader(Dataset(items), batch_size=8, shuffle=shuffle)


def _brightness_loader(n: int, seed: int, spatial_dims: int = 2, shuffle: bool = True) -> DataLoader:
    """An easy task for global-average-pooled networks: the class is the image's brightness (0, 0.5 or 1)."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, *[8] * spatial_dims)
    items = [{"image": (i % 3) / 2 + 0.1 * torch.randn(shape, generator=g), "label": i % 3} for i in range(n)]
    return DataLoader(Dataset(items), batch_size=8, shuffle=shuffle)


def _accuracy(net: nn.Module, loader: DataLoader) -> float:
    right = total = 0
    with torch.no_grad():
        for batch in loader:
            right += int((final_logits(net(batch["image"])).argmax(1) == batch["label"]).sum())
            total += batch["label"].numel()
    return right / total


def _mean_loss(net: nn.Module, loader: DataLoader, loss: nn.Module) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            total += float(loss(net(batch["image"]), batch["label"])) * batch["label"].numel()
            n += batch["label"].numel()
    return total / n


class _Sabotage:
    """After epoch 2 (its validation has run), push every input to class 0: later validations get worse."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.last: dict[str, Tensor] = {}

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(once=2), self._break)
        engine.add_event_handler(Events.COMPLETED, self._keep_last)

    def _break(self, _engine: Any) -> None:
        with torch.no_grad():
            self.net.fc.bias[0] += 1e4

    def _keep_last(self, _engine: Any) -> None:
        self.last = {k: v.detach().clone() for k, v in self.net.state_dict().items()}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("select", ["accuracy", "loss"])
def test_validation_selected_checkpoint_is_returned_and_saved(tmp_path: Path, spatial_dims: int, select: str) -> None:
    train, val = _brightness_loader(24, 1, spatial_dims), _brightness_loader(12, 2, spatial_dims, shuffle=False)
    torch.manual_seed(0)
    net = TinyClassifier(spatial_dims)
    sabotage = _Sabotage(net)
    settings = TrainSettings(epochs=4, optimizer="sgd", lr=0.5, select=select, seed=0)  # type: ignore[arg-type]
    path = tmp_path / "model.pt"
    result = train_classifier(net, train, val, settings, None, path, {"arch": "tiny"}, train_handlers=[sabotage])

    assert [e for e, _ in result.history] == [1, 2, 3, 4]
    values = [v for _, v in result.history]
    best = min(values) if select == "loss" else max(values)
    assert result.best_value == best
    assert result.best_epoch == values.index(best) + 1
    assert result.best_epoch <= 2, f"the sabotaged epochs 3-4 are worse: {result.history}"
    assert (values[-1] > best) if select == "loss" else (values[-1] < best), f"a real choice: {result.history}"
    assert result.metric == f"val_{select}"

    state = result.network.state_dict()
    assert any(not torch.equal(state[k], sabotage.last[k]) for k in state), "not the last epoch's weights"
    ckpt = load_checkpoint(path)
    assert all(torch.equal(ckpt["model"][k], state[k]) for k in state), "the saved weights are the returned ones"
    assert ckpt["config"]["arch"] == "tiny"
    assert ckpt["config"]["best_epoch"] == result.best_epoch
    assert ckpt["config"][f"best_val_{select}"] == result.best_value
    assert ckpt["config"]["train_seconds"] == pytest.approx(result.seconds)
    assert not result.network.training, "returned in eval mode"
    if select == "accuracy":
        assert _accuracy(result.network, val) == pytest.approx(result.best_value)
    else:
        assert _mean_loss(result.network, val, nn.CrossEntropyLoss()) == pytest.approx(result.best_value, rel=1e-5)


class _TwoExits(nn.Module):
    """A multi-exit classifier: logits after the first conv block and at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.body = TinyClassifier(2)
        self.exit1 = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x: Tensor) -> list[Tensor]:
        early = self.body.features[:2](x)
        return [self.exit1(early), self.body(x)]


def test_multi_exit_network_with_a_weighted_loss(tmp_path: Path) -> None:
    train, val = _brightness_loader(24, 1), _brightness_loader(12, 2)
    torch.manual_seed(0)
    net = _TwoExits()
    loss = MultiExitLoss(weights=[0.3, 0.7])
    settings = TrainSettings(epochs=6, optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=1e-4, seed=0)
    result = train_classifier(net, train, val, settings, loss, tmp_path / "m.pt")
    assert _accuracy(result.network, val) == pytest.approx(result.best_value), "accuracy of the final exit"
    assert result.best_value > 0.9, f"the brightness task is easy: {result.history}"
    by_loss = train_classifier(_TwoExits(), train, val, TrainSettings(epochs=2, select="loss", seed=0), loss)
    assert _mean_loss(by_loss.network, val, loss) == pytest.approx(by_loss.best_value, rel=1e-5)


def test_optimizer_scheduler_and_balanced_sampling() -> None:
    train, val = _loader(2, 24, 1, True), _loader(2, 12, 2)
    net = TinyClassifier(2)
    sgd = TrainSettings(epochs=2, optimizer="sgd", lr=0.1, momentum=0.8, nesterov=True, weight_decay=1e-3)
    trainer, evaluator = classifier_engines(net, train, val, sgd, nn.CrossEntropyLoss())
    group = trainer.optimizer.param_groups[0]
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.1, 0.8, True, 1e-3)
    assert set(evaluator.state.metrics) == set(), "the evaluator has not run yet"

    seen: dict[str, Any] = {}

    class _Spy:
        def attach(self, engine: Any) -> None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._record)

        def _record(self, engine: Any) -> None:
            seen.setdefault("lr", []).append(engine.optimizer.param_groups[0]["lr"])
            seen["sampler"] = type(engine.data_loader.sampler).__name__

    flat = TrainSettings(epochs=2, scheduler=None, class_balanced=True, seed=0)
    train_classifier(TinyClassifier(2), train, val, flat, train_handlers=[_Spy()])
    assert seen["lr"] == [1e-3, 1e-3], "no schedule: a constant learning rate"
    assert seen["sampler"] == "WeightedRandomSampler"
    seen.clear()
    cosine = TrainSettings(epochs=2, eta_min=1e-5, seed=0)
    train_classifier(TinyClassifier(2), train, val, cosine, train_handlers=[_Spy()])
    assert seen["lr"][-1] == pytest.approx(1e-5), "cosine annealing reaches eta_min after the last epoch"
    assert seen["sampler"] == "RandomSampler"


def test_same_seed_same_weights() -> None:
    train, val = _loader(2, 16, 1, True), _loader(2, 8, 2)
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        net = TinyClassifier(2)
        train_classifier(net, train, val, TrainSettings(epochs=2, seed=5))
        states.append(net.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        TrainSettings(optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="select"):
        TrainSettings(select="auroc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epochs"):
        TrainSettings(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        TrainSettings(lr=0)


def test_load_classifier_rebuilds_2d_and_3d(tmp_path: Path) -> None:
    net = build_classifier("resnet10", 2, in_channels=1, spatial_dims=3)
    config = {"arch": "resnet10", "class_names": ["a", "b"], "in_channels": 1, "spatial_dims": 3}
    save_checkpoint({"model": net.state_dict(), "config": config}, tmp_path / "c.pt")
    loaded, cfg = load_classifier(tmp_path / "c.pt")
    assert cfg == config
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x))
    save_checkpoint({"model": net.state_dict()}, tmp_path / "bare.pt")
    with pytest.raises(DataError, match=r"bare\.pt.*not a `medood posthoc train` checkpoint"):
        load_classifier(tmp_path / "bare.pt")
    save_checkpoint({"model": net.state_dict(), "config": {"arch": "resnet10"}}, tmp_path / "partial.pt")
    with pytest.raises(DataError, match="class_names"):
        load_classifier(tmp_path / "partial.pt")
    with pytest.raises(DataError, match="does not exist"):
        load_classifier(tmp_path / "nowhere.pt")
