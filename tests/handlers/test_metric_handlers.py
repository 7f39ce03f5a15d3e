"""Ignite metric handlers inside a real MONAI SupervisedEvaluator and a tiny ignite Engine."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.handlers import from_engine

from medood.handlers.metrics import OODAUROC, OODFPR95, BestDice, OODAUPRIn, OODAUPROut, VoxelAP
from medood.metrics import aupr_in, aupr_out, auroc, best_dice, fpr_at_tpr, pixel_ap


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _dataset(n: int = 12) -> tuple[list[dict], torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    is_ood = torch.tensor([0, 1] * (n // 2))
    lesion = (torch.rand(n, 1, 8, 8, generator=g) < 0.1).float()
    offset = 0.3 * torch.randn(n, 1, 1, 1, generator=g) + 0.5 * is_ood[:, None, None, None]  # overlapping classes
    images = torch.randn(n, 1, 8, 8, generator=g) * 0.7 + lesion + offset
    data = [{"image": images[i], "label": lesion[i], "is_ood": is_ood[i]} for i in range(n)]
    return data, images, lesion, is_ood


def _to_ood_keys(d: dict) -> dict:
    """Post-transform standing in for the OOD evaluator: score = mean map, map = network output."""
    d["ood_map"] = d["pred"]
    d["ood_score"] = d["pred"].mean()
    return d


def test_handlers_in_supervised_evaluator_decollated() -> None:
    data, images, lesion, is_ood = _dataset()
    scores = images.mean(dim=(1, 2, 3))
    metrics = {
        "fpr95": OODFPR95(),
        "fpr95_id": OODFPR95(fpr_positive="id"),
        "aupr_in": OODAUPRIn(),
        "aupr_out": OODAUPROut(),
        "pixel_ap": VoxelAP(max_voxels_per_case=None),
        "best_dice": BestDice(max_voxels_per_case=None),
    }
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=5),
        network=_Identity(),
        postprocessing=_to_ood_keys,
        key_val_metric={"auroc": OODAUROC()},  # is_ood stays in engine.state.batch: found there
        additional_metrics=metrics,
    )
    evaluator.run()
    got = evaluator.state.metrics
    assert got["auroc"] == pytest.approx(auroc(scores, is_ood), abs=1e-6)
    assert 0.5 < got["auroc"] < 1.0, "the toy data should be separable but not perfectly"
    assert got["fpr95"] == pytest.approx(fpr_at_tpr(scores, is_ood), abs=1e-6)
    assert got["fpr95_id"] == pytest.approx(fpr_at_tpr(scores, is_ood, positive="id"), abs=1e-6)
    assert got["aupr_in"] == pytest.approx(aupr_in(scores, is_ood), abs=1e-6)
    assert got["aupr_out"] == pytest.approx(aupr_out(scores, is_ood), abs=1e-6)
    assert got["pixel_ap"] == pytest.approx(pixel_ap(images, lesion), abs=1e-6)
    assert got["best_dice"] == pytest.approx(best_dice(images, lesion).dice, abs=1e-6)
    evaluator.run()  # a second run resets the metrics instead of accumulating
    assert evaluator.state.metrics["auroc"] == pytest.approx(got["auroc"], abs=1e-12)


def test_handlers_with_ood_evaluator() -> None:
    """The handlers score OODEvaluator's ood_score against the batch's ground-truth is_ood."""
    from medood.engines import OODEvaluator

    data, images, lesion, is_ood = _dataset()
    scores = images.amax(dim=(1, 2, 3))  # OODEvaluator reduces the map with max by default
    evaluator = OODEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=5),
        network=_Identity(),
        key_val_metric={"auroc": OODAUROC()},
        additional_metrics={"pixel_ap": VoxelAP(max_voxels_per_case=None)},  # map found under "pred"
    )
    evaluator.run()
    assert evaluator.state.metrics["auroc"] == pytest.approx(auroc(scores, is_ood), abs=1e-6)
    assert evaluator.state.metrics["pixel_ap"] == pytest.approx(pixel_ap(images, lesion), abs=1e-6)


def test_batch_first_output_and_custom_transform() -> None:
    data, images, _, is_ood = _dataset()
    scores = images.mean(dim=(1, 2, 3))
    for d in data:
        d["label"] = d["is_ood"]  # image-level label read by MONAI's prepare_batch
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=4),
        network=_Identity(),
        decollate=False,
        postprocessing=lambda out: {**out, "pred": out["pred"].mean(dim=(1, 2, 3))},
        key_val_metric={"auroc": OODAUROC(score_key="pred", label_key="label")},
        additional_metrics={"auroc2": OODAUROC(output_transform=from_engine(["pred", "label"]))},
    )
    evaluator.run()
    assert evaluator.state.metrics["auroc"] == pytest.approx(auroc(scores, is_ood), abs=1e-6)
    assert evaluator.state.metrics["auroc2"] == pytest.approx(auroc(scores, is_ood), abs=1e-6)


def test_voxel_handler_with_foreground_in_plain_engine() -> None:
    _, images, lesion, _ = _dataset()
    fg = torch.zeros_like(lesion)
    fg[..., 1:7, 1:7] = 1
    batches = [slice(0, 5), slice(5, 12)]

    def step(engine: Engine, sl: slice) -> list[dict]:
        return [{"ood_map": images[i], "label": lesion[i], "brain": fg[i]} for i in range(sl.start, sl.stop)]

    engine = Engine(step)
    VoxelAP(max_voxels_per_case=None, foreground_key="brain").attach(engine, "pixel_ap")
    engine.run(batches)
    assert engine.state.metrics["pixel_ap"] == pytest.approx(pixel_ap(images, lesion, foreground=fg), abs=1e-9)


def test_missing_key_is_a_clear_error() -> None:
    engine = Engine(lambda e, b: {"pred": torch.zeros(2)})
    OODAUROC().attach(engine, "auroc")
    with pytest.raises(KeyError, match=r"'ood_score' is neither in engine\.state\.output"):
        engine.run([0])
