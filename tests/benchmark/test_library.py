"""The shared pieces of the per-method benchmark scripts: tables, timing, bundle datalists, the timed evaluator run,
score collection over a loader, and the page writer."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from medood.benchmark.bundles import (
    class_folder_sets,
    collect_scores,
    item_loader,
    model_space_transform,
    split_evaluation_items,
    timed_evaluator_run,
)
from medood.benchmark.report import bench_header, write_page
from medood.benchmark.runner import resolved_k, trained_classifier
from medood.benchmark.script import add_common_arguments, render_only
from medood.benchmark.tables import fmt3, md_table, mean_over_sets, ood_task_section, ood_task_table, set_sizes
from medood.benchmark.timing import CallTimer, forward_ratio, measure, median_time, over_batches, peak_memory
from medood.detectors import NERODetector


def _row(**auroc: float) -> dict[str, dict[str, float]]:
    return {d: {"auroc": a, "fpr95": 1 - a} for d, a in auroc.items()}


def test_md_table_and_formatting() -> None:
    assert md_table(["a", "b"], [[1, "x"], ["y", 2.5]]) == ["| a | b |", "|---|---|", "| 1 | x |", "| y | 2.5 |"]
    assert md_table(["only"], []) == ["| only |", "|---|"]
    assert fmt3(0.12345) == "0.123" and fmt3(3) == "3" and fmt3(None) == "None"
    assert set_sizes({"near": 3, "far": 10}) == "near (3), far (10)"


def test_ood_task_table_orders_by_mean_auroc_and_bolds_the_method() -> None:
    table = {"s1": _row(msp=0.9, mine=0.6), "s2": _row(msp=0.5, mine=0.8)}
    assert mean_over_sets(table, "mine", "auroc") == pytest.approx(0.7)
    lines = ood_task_table(table, highlight="mine")
    assert lines[0] == "| detector | s1 AUROC / FPR95 | s2 AUROC / FPR95 | mean AUROC | mean FPR95 |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| msp | 90.0 / 10.0 | 50.0 / 50.0 | 70.0 | 30.0 |"  # tie at 70: the table's order stays
    assert lines[3] == "| **mine** | 60.0 / 40.0 | 80.0 / 20.0 | 70.0 | 30.0 |"
    given = ood_task_table(table, ["mine", "msp"], mean=lambda _t, _d, _m: 0.5)
    assert given[2].startswith("| mine |") and given[2].endswith("| 50.0 | 50.0 |")


def test_measure_sees_a_native_allocation() -> None:
    def allocate() -> int:
        a = np.ones(64 * 2**20 // 8)  # 64 MB, touched
        return int(a.size)

    m = measure(allocate)
    assert m.value == 8 * 2**20 and m.seconds > 0
    if m.exact:  # VmHWM could be reset: the 64 MB show (minus what the allocator already held)
        assert m.peak_mb > 32
    value, seconds, mb = peak_memory(lambda: 7)
    assert value == 7 and seconds >= 0 and mb >= 0


def test_median_time_and_over_batches_call_counts() -> None:
    calls: list[Any] = []
    assert median_time(lambda: calls.append(1), 4) >= 0 and len(calls) == 5  # a warm-up, then 4 timed
    seen: list[bool] = []
    over_batches(lambda b: seen.append(torch.is_grad_enabled()), [1, 2, 3], no_grad=True)()
    over_batches(lambda b: seen.append(torch.is_grad_enabled()), [1])()
    assert seen == [False, False, False, True]


def test_forward_ratio_of_a_slower_method() -> None:
    net = torch.nn.Linear(64, 8)
    batches = [torch.rand(16, 64) for _ in range(3)]

    def twice() -> None:
        with torch.no_grad():
            for x in batches:
                for _ in range(20):
                    net(x)

    ratio, t_fwd, t_other = forward_ratio(net, batches, twice, 3)
    assert t_fwd > 0 and t_other > t_fwd and ratio > 1


class _Detector(torch.nn.Module):
    """A stand-in detector: ``infer`` scores a batch by its mean, without calling ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


def test_call_timer_hooks_forward_or_wraps_a_method() -> None:
    det = _Detector()
    with CallTimer(det) as t:
        det(torch.rand(3, 2))
        det.infer(torch.rand(3, 2))  # not a forward call
    assert len(t.times) == 1 and not det._forward_hooks and not det._forward_pre_hooks
    with CallTimer(det, "infer") as t:
        out = det.infer(torch.ones(2, 2))
        det.infer(torch.ones(2, 2))
        det(torch.rand(1, 2))
    assert len(t.times) == 2 and torch.equal(out, torch.ones(2))
    assert "infer" not in vars(det)  # the class's method again
    det.infer(torch.ones(1, 2))
    assert len(t.times) == 2


class _Evaluator:
    """Runs a network's ``infer`` over every item of a datalist, as an OOD evaluator does."""

    def __init__(self, network: _Detector, datalist: list[dict[str, Any]]) -> None:
        self.network, self.datalist = network, datalist
        self.scores: list[float] = []

    def run(self) -> None:
        for item in self.datalist:
            self.scores.append(float(self.network.infer(torch.tensor([item["x"]]))[0]))


def test_timed_evaluator_run_times_each_detector_call() -> None:
    det = _Detector()
    items = [{"x": [float(i), 1.0]} for i in range(4)]
    p = ConfigParser()
    p["network"], p["datalist"] = det, items
    p["evaluator"] = _Evaluator(det, items)
    run = timed_evaluator_run(p)
    assert run.n == 4 and len(run.network_seconds) == 4 and run.network is det
    assert run.wall_seconds >= sum(run.network_seconds) and run.mean_network_seconds > 0
    assert p["evaluator"].scores == [0.5, 1.0, 1.5, 2.0]


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_class_folder_sets_and_a_fake_detector_over_the_loader(tmp_path: Path) -> None:
    for split, n in (("train", 2), ("test", 3)):
        for c, cls in enumerate(("a", "b")):
            for i in range(n):
                _png(tmp_path / split / cls / f"{cls}{i}.png", 10 * c + i)
    for group, kind, value in (("ood_near", "blur", 200), ("ood_far", "xray", 250), ("ood_far", "ct", 240)):
        _png(tmp_path / group / kind / "x0.png", value)
    train, test, sets = class_folder_sets(tmp_path, ["a", "b"])
    assert len(train) == 4 and len(test) == 6 and all(d["is_ood"] == 0 for d in test)
    assert set(sets) == {"ood_near/blur", "ood_far/ct", "ood_far/xray"}
    assert all(d["label"] == -1 and d["is_ood"] == 1 for v in sets.values() for d in v)
    again, by_set = split_evaluation_items([*test, *sets["ood_far/xray"], *sets["ood_near/blur"]])
    assert again == test and list(by_set) == ["ood_far/xray", "ood_near/blur"]

    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRanged

    pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image"),
                   ScaleIntensityRanged("image", 0, 255, 0, 1)])  # fmt: skip
    loader = item_loader(test, pre, batch_size=4, keys=("image", "label"))
    assert len(loader.dataset) == 6  # type: ignore[arg-type]
    scores = collect_scores(loader, lambda x: {"mean": x.mean((1, 2, 3)), "max": x.amax((1, 2, 3))})
    assert scores["mean"].shape == (6,) and torch.allclose(scores["mean"], scores["max"])  # flat images
    expected = torch.tensor([0, 1, 2, 10, 11, 12], dtype=torch.float32) / 255
    assert torch.allclose(scores["mean"], expected, atol=1e-6)  # loader order = datalist order


def test_write_page_and_render_only(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "x.json"
    payload = {**bench_header(), "value": math.nan, "t": torch.tensor(2.0).item()}
    assert list(payload)[:3] == ["machine", "fpr95_convention", "metrics"]
    assert list(bench_header(conventions=False)) == ["machine"]
    js, md = write_page(out, payload, "# page\n", indent=1)
    assert js == out and md.read_text() == "# page\n" and '"value": NaN' in out.read_text()
    assert math.isnan(json.loads(out.read_text())["value"])
    p = add_common_arguments(argparse.ArgumentParser(), out, threads=2)
    args = p.parse_args(["--markdown-only"])
    assert args.render and args.threads == 2 and args.out == out
    assert render_only(args, lambda r: f"value {r['t']}\n") and md.read_text() == "value 2.0\n"
    assert not render_only(p.parse_args([]), lambda r: "never")
    assert "--render" not in add_common_arguments(argparse.ArgumentParser(), out, render=False).format_help()


def test_resolved_k_reports_neros_clamp() -> None:
    g = torch.Generator().manual_seed(0)
    feats = {"features": torch.rand(30, 6, generator=g), "logits": torch.rand(30, 3, generator=g)}
    det = NERODetector(weight=torch.randn(3, 6, generator=g), bias=torch.zeros(3)).fit_features(
        feats, torch.arange(30) % 3
    )
    assert resolved_k(det) == {"k": 175, "k_effective": 6, "d": 6}
    assert resolved_k(object()) is None


def test_ood_task_section_states_where_the_method_stands() -> None:
    table = {"s1": _row(msp=0.9, mine=0.6), "s2": _row(msp=0.5, mine=0.8)}
    lines = ood_task_section("task", "Intro.", table, "mine", "Mine")
    assert lines[:5] == ["", "## task", "", "Intro.", ""] and lines[-2] == ""
    assert lines[-1].startswith("Mine: rank 2 of 2 by mean AUROC (70.0; best other: msp 70.0)")
    assert ood_task_section("t", "i", table)[-1].startswith("| mine |")  # no method: no standing sentence


def test_model_space_transform_reads_a_volume_and_its_mask_together(tmp_path: Path) -> None:
    import nibabel as nib

    vol = np.zeros((12, 12, 12), np.float32)
    vol[2:10, 2:10, 2:10] = np.linspace(1, 2, 8 * 8 * 8).reshape(8, 8, 8)
    mask = np.zeros_like(vol)
    mask[4:6, 4:6, 4:6] = 1
    for name, arr in (("img", vol), ("mask", mask)):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    out = model_space_transform((1.0, 1.0, 1.0), (10, 10, 10), ["image"], ["label"])(
        {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "mask.nii.gz")}
    )
    img, lab = out["image"], out["label"]
    assert img.shape == lab.shape == (1, 10, 10, 10) and img.dtype == torch.float32
    assert set(torch.unique(lab).tolist()) == {0.0, 1.0} and int(lab.sum()) == 8  # nearest: the mask stays binary
    assert bool((img[lab > 0] > 0).all())  # cropped and padded together: the mask still lies on the brain
    doubled = model_space_transform(
        (1.0, 1.0, 1.0), (10, 10, 10), ["image"], intensity=[lambda d: {**d, "image": 2 * d["image"]}]
    )({"image": str(tmp_path / "img.nii.gz")})
    assert torch.allclose(doubled["image"], 2 * img)


def test_trained_classifier_trains_once_then_loads(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for c, cls in enumerate(("a", "b")):
            for i in range(2):
                _png(tmp_path / "data" / split / cls / f"{cls}{i}.png", 100 * c + i)
    net, cfg = trained_classifier(tmp_path / "data", tmp_path / "host", 1)
    assert (tmp_path / "host" / "model.pt").is_file() and not net.training and list(cfg["class_names"]) == ["a", "b"]
    stamp = (tmp_path / "host" / "model.pt").stat().st_mtime_ns
    again, cfg2 = trained_classifier(tmp_path / "data", tmp_path / "host", 1)
    assert cfg2 == cfg and (tmp_path / "host" / "model.pt").stat().st_mtime_ns == stamp  # loaded, not retrained
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(net(x), again(x))
