"""medood.benchmark.volume_scores and medood.benchmark.mim_shift (scripts/bench_mim_shift.py's sweep) on tiny
synthetic stage volumes, each figure against a direct numpy / scipy / sklearn computation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from sklearn.metrics import average_precision_score, roc_auc_score

from medood.benchmark.mim_shift import (
    GRID,
    SHIPPED,
    choose,
    evaluate,
    flagging_alternatives,
    lesion_stages,
    make_map,
    map_score,
)
from medood.benchmark.volume_scores import VOLUME_SCORE_LABELS, VOLUME_SCORES

N = 20


def _brain() -> np.ndarray:
    """A ball of radius 8 in a 20^3 grid (off the array border, so the rim erosion is the only one)."""
    zz, yy, xx = np.mgrid[:N, :N, :N]
    return ((zz - 9.5) ** 2 + (yy - 9.5) ** 2 + (xx - 9.5) ** 2) < 8**2


def _top_mean(values: np.ndarray, fraction: float) -> float:
    return float(np.sort(values)[::-1][: math.ceil(fraction * values.size)].mean())


def _score(name: str, amap: np.ndarray, brain: np.ndarray, flagged: np.ndarray) -> float:
    return VOLUME_SCORES[name](torch.from_numpy(amap), torch.from_numpy(brain), torch.from_numpy(flagged))


def test_top_k_scores_and_rim_exclusion() -> None:
    brain = _brain()
    amap = (np.random.default_rng(0).gamma(2.0, 0.1, brain.shape) * brain).astype(np.float32)
    amap[brain & ~ndi.binary_erosion(brain)] += 5.0  # a hot rim: the rim-excluded score must not see it
    none = np.zeros(brain.shape, np.uint8)
    assert _score("topk_0.001", amap, brain, none) == pytest.approx(_top_mean(amap[brain], 0.001))
    assert _score("topk_0.01", amap, brain, none) == pytest.approx(_top_mean(amap[brain], 0.01))
    inner = ndi.distance_transform_cdt(brain, metric="taxicab") > 5  # 5 six-connected erosions = L1 distance > 5
    rim5 = _score("topk_0.001_rim5", amap, brain, none)
    assert rim5 == pytest.approx(_top_mean(amap[inner], 0.001)) and rim5 < 5.0 < _score("topk_0.001", amap, brain, none)
    positive = np.sort(amap[brain & (amap > 0)])
    median = positive[(positive.size - 1) // 2]  # torch.median: the lower middle value of an even count
    assert _score("selfnorm_0.001", amap, brain, none) == pytest.approx(_top_mean(amap[brain], 0.001) / median)
    assert _score("selfnorm_0.001", 3 * amap, brain, none) == pytest.approx(_score("selfnorm_0.001", amap, brain, none))


def test_local_contrast_ignores_a_smooth_offset() -> None:
    brain = _brain()
    flat = brain.astype(np.float32) * 2.0  # constant on the brain: its brain-normalised background is itself
    none = np.zeros(brain.shape, np.uint8)
    assert abs(_score("local_8", flat, brain, none)) < 1e-4
    spot = flat.copy()
    spot[9:11, 9:11, 9:11] += 1.0  # 8 voxels, above the top 0.5 % (11 of ~2100 brain voxels) on their own
    assert 0.4 < _score("local_8", spot, brain, none) < 1.0


def test_flagged_and_region_scores() -> None:
    brain = _brain()
    amap = np.zeros(brain.shape, np.float32)
    flagged = np.zeros(brain.shape, np.uint8)
    flagged[4:6, 8:10, 8:10] = 1  # 8 voxels
    flagged[10:13, 10:13, 10:13] = 1  # 27
    flagged[13, 13, 13] = 1  # touches the 27 by a corner: not 6-connected
    flagged[0, 0, 0] = 1  # outside the brain: not counted
    assert _score("flagged_largest", amap, brain, flagged) == 27.0
    assert _score("flagged_largest", amap, brain, np.zeros_like(flagged)) == 0.0
    amap[brain] = 0.5
    expected = 0.5 * ((flagged > 0) & brain).sum() / brain.sum()
    assert _score("flagged_mass", amap, brain, flagged) == pytest.approx(expected)
    regions = np.zeros(brain.shape, np.float32)
    regions[4:6, 8:10, 8:10] = 0.25  # 8 voxels above 0.2
    regions[6, 10, 10] = 0.25  # joins them by a corner: 26-connected, 9
    regions[12:15, 12:15, 12:14] = 0.15  # 18 voxels above 0.1 only
    assert [_score(f"region_{q}", regions, brain, flagged) for q in (0.1, 0.2, 0.3)] == [18.0, 9.0, 0.0]
    assert list(VOLUME_SCORES) == list(VOLUME_SCORE_LABELS)


class _Net:
    """Stands in for the MIM detector: its post-processing is the identity; it records the settings it ran with."""

    erode_mask = 1

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def postprocess_map(self, raw: torch.Tensor, image: torch.Tensor, minpool: int, avgpool: int) -> torch.Tensor:
        self.calls.append((minpool, avgpool, self.erode_mask))
        return raw * (image > 0)


def _volume(rng: np.random.Generator, lesion: bool, case: str, site: str = "demo") -> dict[str, Any]:
    """A stage volume: the residual higher inside a 27-voxel lesion, flagged tokens on the lesion and 2 decoys."""
    brain = torch.from_numpy(_brain())
    label = torch.zeros(brain.shape, dtype=torch.bool)
    if lesion:
        label[8:11, 8:11, 8:11] = True
    residual = torch.from_numpy(rng.gamma(2.0, 0.05, brain.shape).astype(np.float32)) * brain + 0.3 * label
    flagged = label.clone()
    flagged[4, 4:6, 9] = True
    return {
        "image": brain.float() * 2.0,
        "residual": residual,
        "recon_residual": residual / 2,
        "token_nll": torch.arange(brain.numel(), dtype=torch.float32).reshape(brain.shape) % 100 + 100.0 * label,
        "flagged": flagged.float(),
        "label": label if lesion else None,
        "seconds": 2.0 if lesion else 4.0,
        "case": case,
        "lesioned": int(lesion),
        "site": site,
    }


def _sets(seed: int) -> dict[str, list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    return {
        "clean": [_volume(rng, False, "h0"), _volume(rng, False, "h1"), _volume(rng, True, "h0")],
        "shifted": [_volume(rng, False, "s0", "a"), _volume(rng, True, "s0", "a")],
    }


def test_make_map_gates_and_restores_the_detector() -> None:
    net, v = _Net(), _sets(0)["clean"][2]
    gated = make_map(net, v, {"residual": "gated", "minpool": 3, "avgpool": 5, "erode": 2})
    assert torch.equal(gated, v["residual"] * (v["flagged"] > 0))
    assert torch.equal(make_map(net, v, SHIPPED), v["residual"])
    assert net.calls == [(3, 5, 2), (1, 5, 1)] and net.erode_mask == 1


def test_fix_sweep_figures_threshold_and_choice() -> None:
    vols = _sets(1)
    settings = [SHIPPED, {**SHIPPED, "residual": "gated"}]
    rows = evaluate(_Net(), vols, settings, "nyul")
    assert [(r["prep"], r["residual"]) for r in rows] == [("nyul", "input"), ("nyul", "gated")]
    assert rows[0]["seconds_per_volume"] == pytest.approx((3 * 4.0 + 2 * 2.0) / 5)
    clean, shifted = rows[0]["clean"], rows[0]["shifted"]
    healthy = np.concatenate([v["residual"][v["image"] > 0].numpy() for v in vols["clean"] if not v["lesioned"]])
    n = healthy.size  # split-conformal at alpha 0.005: the ceil((n + 1)(1 - alpha))-th smallest healthy value
    assert clean["own_healthy_threshold"] == pytest.approx(np.sort(healthy)[math.ceil((n + 1) * 0.995) - 1])
    assert shifted["map_threshold"] == clean["map_threshold"] != shifted["own_healthy_threshold"]
    les = vols["shifted"][1]
    brain = (les["image"] > 0).numpy()
    scores, y = les["residual"].numpy()[brain], les["label"].numpy()[brain]
    assert shifted["all"]["pixel_ap"] == pytest.approx(average_precision_score(y, scores))
    assert shifted["<500"]["lesions"] == 1 and shifted["<500"]["detected_map"] == 1.0
    assert "500-1500" not in shifted and ">1500" not in shifted
    for name, fn in (("topk_0.001", lambda v: _top_mean(v["residual"][v["image"] > 0].numpy(), 0.001)),
                     ("flagged_largest", lambda v: 27.0 if v["lesioned"] else 2.0)):  # fmt: skip
        s = [fn(v) for v in vols["clean"]]
        assert clean["volume_auroc"][name] == pytest.approx(roc_auc_score([0, 0, 1], s))
    gated = rows[1]["shifted"]  # only the lesion and 2 decoy voxels survive the gate: the map ranks the lesion first
    assert gated["all"]["pixel_ap"] == pytest.approx(1.0) and shifted["all"]["pixel_ap"] < 0.99
    assert map_score(gated) == pytest.approx(np.mean(list(gated["all"].values())))
    chosen = choose(rows)
    worst = [min(map_score(r[s]) for s in ("clean", "shifted")) for r in rows]
    assert chosen["setting"] == {"prep": "nyul", **settings[int(np.argmax(worst))]}
    assert chosen["worst_case_map_score"] == pytest.approx(max(worst)) and chosen["sets"] == ["clean", "shifted"]
    best = rows[int(np.argmax(worst))]
    aurocs = {k: min(best[s]["volume_auroc"][k] for s in ("clean", "shifted")) for k in VOLUME_SCORES}
    assert chosen["volume_score"] == max(aurocs, key=aurocs.__getitem__)  # the first of equally good scores
    assert chosen["worst_case_volume_auroc"] == max(aurocs.values())
    assert len(GRID) == 12 and SHIPPED in GRID


def test_lesion_stages_and_flagging_alternatives() -> None:
    vols = _sets(2)
    st = lesion_stages(vols)
    ref = np.concatenate([v["token_nll"][v["image"] > 0].numpy()[::5] for v in vols["clean"][:2]])
    p95 = np.quantile(ref, 0.95)
    assert st["nll_p95"] == pytest.approx(p95)
    brain = vols["clean"][0]["image"] > 0
    healthy_rate = float((vols["clean"][0]["token_nll"][brain] > p95).float().mean())
    assert st["healthy"]["clean"]["nll_above_p95"] == pytest.approx(healthy_rate)
    assert st["healthy"]["clean"]["flagged"] == pytest.approx(2 / brain.sum().item())
    assert [(r["set"], r["case"], r["voxels"]) for r in st["lesioned"]] == [("clean", "h0", 27), ("shifted", "s0", 27)]
    les = vols["shifted"][1]
    assert st["lesioned"][1]["flagged"] == 1.0 and st["lesioned"][1]["nll_above_p95"] == 1.0  # NLL + 100 inside
    assert st["lesioned"][1]["residual"] == pytest.approx(float(les["residual"][les["label"]].mean()))
    assert st["lesioned"][1]["recon_residual"] == pytest.approx(st["lesioned"][1]["residual"] / 2)
    unflagged = _sets(3)
    for v in unflagged["clean"] + unflagged["shifted"]:
        v["flagged"] = torch.zeros_like(v["flagged"])
    alt = flagging_alternatives(_Net(), [("same", vols), ("none", unflagged)], SHIPPED, "flagged_largest", "nyul")
    assert list(alt) == ["same", "none"]
    assert alt["same"]["lesion_flagged_mean"] == 1.0 and alt["same"]["lesions_under_10pct_flagged"] == 0
    assert alt["none"]["lesion_flagged_mean"] == 0.0 and alt["none"]["lesions_under_10pct_flagged"] == 2
    assert alt["same"]["volume_auroc"] == {"clean": 1.0, "shifted": 1.0}
    assert alt["none"]["volume_auroc"] == {"clean": 0.5, "shifted": 0.5}  # every volume scores 0
    assert alt["same"]["lesioned_volumes"] == 2 and set(alt["same"]["map_score"]) == {"clean", "shifted"}
