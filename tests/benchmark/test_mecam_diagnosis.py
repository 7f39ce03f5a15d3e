"""MECAM per-stage diagnosis: CAM statistics, feature changes, the per-image figures, the rule and the page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medood.benchmark.mecam_diagnosis import (
    SHIPPED,
    cam_quality,
    candidate_name,
    image_figures,
    select,
    set_table,
)
from medood.benchmark.mecam_diagnosis_page import figure_name, finding, markdown, write_figures
from medood.detectors.mecam import MECAMDetector


def _det() -> MECAMDetector:
    torch.manual_seed(0)
    return MECAMDetector(**MECAMDetector.tiny_config(2)).mark_fitted().eval()  # type: ignore[return-value]


def test_cam_quality_extremes() -> None:
    uniform = torch.full((1, 1, 10, 10), 0.3)
    peak = torch.zeros(1, 1, 10, 10)
    peak[0, 0, 2, 3] = 1.0
    u, p = cam_quality(uniform), cam_quality(peak)
    assert u["entropy"].item() == pytest.approx(1.0) and u["top10"].item() == pytest.approx(0.1)
    assert u["mean"].item() == pytest.approx(0.3)
    assert p["entropy"].item() == pytest.approx(0.0, abs=1e-9) and p["top10"].item() == pytest.approx(1.0)


def test_image_figures_match_the_detector() -> None:
    det = _det()
    x = torch.rand(3, 1, 16, 16)
    fig = image_figures(det, x, torch.Generator().manual_seed(0))
    assert torch.allclose(fig["cand/" + SHIPPED], fig["mecam"], atol=1e-5)
    subsets = det.score_subsets(x, [[0, 3]])
    assert torch.allclose(fig["cand/" + candidate_name((0, 3), "mse", 1.0)], subsets["exits_03"].double(), atol=1e-5)
    out = det.net.forward_cams(x)
    cam = det.fused_cam(out.cams, x.shape[2:])
    const = cam.mean(dim=(1, 2, 3), keepdim=True)
    expected = -(out.features - det.net.features(x * (1 - const))).pow(2).mean(1)
    assert torch.allclose(fig["ctrl/constant"], expected.double(), atol=1e-5)
    assert not torch.allclose(fig["ctrl/random"], fig["mecam"])  # the shuffled CAM masks other pixels
    assert len([k for k in fig if k.startswith("cand/")]) == 15 * 3 * 2
    det.exits, det.change = (0, 3), "cosine"  # a candidate is the detector with that setting
    assert torch.allclose(fig["cand/" + candidate_name((0, 3), "cosine", 1.0)], det.score(x).image_score.double(),
                          atol=1e-5)  # fmt: skip
    assert all(v.shape == (3,) for v in fig.values())


def _figures(rng: np.random.Generator, good: str, shift: float) -> dict[str, dict[str, np.ndarray]]:
    names = ["mecam", "msp", "feat_norm2", "ctrl/random", "ctrl/constant", "pred", "exit0/cam_top10",
             "cand/" + SHIPPED, "cand/" + good]  # fmt: skip
    out = {}
    for s, n in (("id_val", 60), ("a", 50), ("b", 40)):
        d = {k: rng.normal(0, 1, n) for k in names}
        if s != "id_val":
            d["cand/" + good] += shift
        d["mecam"] = d["cand/" + SHIPPED]
        out[s] = d
    return out


def test_rule_replaces_only_a_clearly_better_setting() -> None:
    rng = np.random.default_rng(0)
    good = candidate_name((0, 3), "cosine", 1.0)
    sel = select(_figures(rng, good, 2.0), "id_val", n_boot=200)
    assert sel["best"] == good and sel["wins"] and sel["difference"]["ci"][0] > 0
    sel = select(_figures(rng, good, 0.0), "id_val", n_boot=200)
    assert not sel["wins"]  # noise alone: the interval of the best candidate's gain reaches 0


def test_page_from_tiny_detector_figures(tmp_path: Path) -> None:
    det, gen = _det(), torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    base = torch.rand(20, 1, 16, 16)
    sets = {"id_val": base, "val_a": (base * 3).clamp(0, 3), "cross_b": torch.rand(12, 1, 16, 16) * 0.1}
    fig = {k: {n: v.numpy() for n, v in image_figures(det, x, gen).items()} for k, x in sets.items()}
    table = set_table(fig, "id_val")
    assert set(table["auroc"]["mecam"]) == {"val_a", "cross_b", "mean"}
    n = {k: len(v) for k, v in sets.items()}
    task = {"bundle": "b", "exits": [0, 1, 2, 3], "n": n, "corruption_sets": ["val_a"], "cross_sets": ["cross_b"],
            "id_val_accuracy": 0.5, "seconds": 1.0, "figures": table,
            "selection": select(fig, "id_val", n_boot=50)}  # fmt: skip
    f = finding(task)
    assert f["stage"] in ("read-out", "CAM", "classifier")
    res = {"machine": "m", "n_boot": 50, "tasks": {"toy": task}}
    page = markdown(res)
    assert "## toy" in page and f"Limiting stage: **{f['stage']}**" in page
    assert "cross-task validation proxy for far-OOD" in page and "| 0123 |" in page
    (png,) = write_figures(res, tmp_path)
    assert png.name == figure_name("toy") and f"]({png.name})" in page
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert img.shape[2] == 3 and (np.abs(img - img[:1, :1]).sum(-1) > 0).mean() > 0.05  # bars drawn, not blank


def test_limiting_stage_rules() -> None:
    def task(rho: float, mecam: float, control: float, premise: bool) -> dict:
        a = {"mecam": {"s": mecam, "mean": mecam}, "ctrl/random": {"mean": 0.5}, "ctrl/constant": {"mean": control},
             "msp": {"mean": 0.4}}  # fmt: skip
        for e in range(4):
            a[f"exit{e}/cam_entropy"] = {"s": 0.7 if premise else 0.3, "mean": 0.7 if premise else 0.3}
            a[f"exit{e}/cam_top10"] = {"s": 0.3, "mean": 0.3}
        return {"figures": {"auroc": a, "spearman": {"feat_norm2": rho}}}

    assert finding(task(-0.8, 0.8, 0.5, True))["stage"] == "read-out"  # follows the norm
    assert finding(task(0.1, 0.66, 0.65, True))["stage"] == "CAM"  # the CAM's location adds little
    assert finding(task(0.1, 0.8, 0.5, False))["stage"] == "CAM"  # OOD CAMs not less focused
    f = finding(task(0.1, 0.8, 0.5, True))
    assert f["stage"] == "classifier" and f["premise"] == 1.0
