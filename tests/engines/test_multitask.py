"""Multi-task trainer over interleaved loaders of different shapes, temperature scaling, the calibration report."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import DynUNet

from medood.engines.multitask import MultiTaskTrainer, calibration_report, collect_logits, fit_temperature


def _net() -> DynUNet:
    torch.manual_seed(0)
    return DynUNet(
        3, 1, 4, kernel_size=[3, 3, 3], strides=[1, [2, 2, 1], [2, 2, 1]], upsample_kernel_size=[[2, 2, 1]] * 2,
        filters=[4, 8, 8],
        norm_name="instance",
    )  # fmt: skip


def _batches(shape: tuple[int, ...], label: int, n: int, task: str, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = (torch.rand(2, 1, *shape, generator=g) > 0.5).long() * label
        x = y.float() + 0.1 * torch.randn(2, 1, *shape, generator=g)
        x[..., 0, 0, 0] = 1.0  # non-zero foreground everywhere the volume is "inside"
        out.append({"image": x, "label": y, "task": [task, task]})
    return out


def test_trainer_logs_each_task_and_learns() -> None:
    net = _net()
    loaders = {"vol": _batches((8, 8, 4), 1, 3, "vol", 0), "slab": _batches((8, 8, 1), 3, 2, "slab", 1)}
    trainer = MultiTaskTrainer(
        "cpu", 6, loaders, network=net, optimizer=torch.optim.Adam(net.parameters(), 1e-2),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
    )  # fmt: skip
    trainer.run()
    assert trainer.state.iteration == 30 and trainer.state.epoch_length == 5
    assert set(trainer.task_losses) == {"vol", "slab"} and all(len(v) == 6 for v in trainer.task_losses.values())
    assert trainer.task_losses["vol"][-1] < trainer.task_losses["vol"][0]
    assert trainer.task_losses["slab"][-1] < trainer.task_losses["slab"][0]

    data = collect_logits(net, loaders["vol"] + loaders["slab"], voxels_per_case=50)
    assert set(data) == {"vol", "slab"} and data["vol"]["logits"].shape == (300, 4)  # 6 cases x 50 voxels
    assert int(data["slab"]["true"].sum()) == 4 * 8 * 8 * 1
    report = calibration_report(net, loaders["vol"], loaders["slab"] + loaders["vol"])
    assert report["temperature"] > 0 and set(report["test"]) == {"vol", "slab"}
    m = report["test"]["vol"]
    assert m["nll_after"] <= m["nll_before"] + 1e-6 or report["temperature"] == pytest.approx(1.0, abs=0.05)
    assert 0.0 <= m["ece_after"] <= 1.0 and set(m["dice_per_class"]) == {1}


def test_fit_temperature_recovers_the_generating_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(20_000, 5, generator=g)
    labels = torch.multinomial(torch.softmax(logits / 2.5, 1), 1, generator=g).reshape(-1)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)
