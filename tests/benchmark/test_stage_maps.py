"""medood.benchmark.stage_maps: every figure checked against a direct computation (sklearn / numpy) on tiny arrays,
and as medood.benchmark.mim_shift and medood.benchmark.mim_tuning (the MIM validation scripts' sweeps) use it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from medood.benchmark import mim_tuning as tune
from medood.benchmark.mim_shift import GRID, MAP_ALPHA, SHIPPED, choose, figures
from medood.benchmark.stage_maps import (
    SIZE_BUCKETS,
    bucket_figures,
    bucket_of,
    choose_worst_case,
    components,
    flag_quality,
    healthy_map_threshold,
    healthy_values,
    load_stage_volumes,
    percentile_table,
    rank_worst_case,
    ranking,
    save_stage_volumes,
    seg_figures,
    volume_aurocs,
)
from medood.benchmark.volume_scores import VOLUME_SCORES

SMALL = {"tiny": (0, 3), "mid": (3, 10), "big": (10, np.inf)}


def _volume(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(map, lesion mask, foreground) of one 12^3 case: 3 lesions of 2, 8 and 27 voxels, the map higher inside."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((12, 12, 12), bool)
    mask[1, 1, 1:3] = True  # 2 voxels
    mask[4:6, 4:6, 4:6] = True  # 8
    mask[8:11, 8:11, 8:11] = True  # 27
    fg = np.zeros_like(mask)
    fg[:, :, :] = True
    fg[0] = False
    amap = rng.normal(0, 1, mask.shape) + 1.5 * mask * rng.random(mask.shape)
    return amap.astype(np.float32), mask, fg


def _best_dice(scores: np.ndarray, y: np.ndarray) -> float:
    return max(2 * np.sum((scores >= t) & y) / (np.sum(scores >= t) + y.sum()) for t in np.unique(scores[y]))


def test_buckets_and_26_connected_components() -> None:
    assert [bucket_of(n) for n in (0, 499, 500, 1499, 1500, 10**6)] == ["<500", "<500", "500-1500", "500-1500",
                                                                      ">1500", ">1500"]  # fmt: skip
    assert list(SIZE_BUCKETS) == ["<500", "500-1500", ">1500"]
    with pytest.raises(ValueError, match="no size bucket"):
        bucket_of(-1)
    _, mask, _ = _volume(0)
    mask[2, 2, 3] = True  # touches the 2-voxel lesion by a corner only: one 26-connected component of 3
    found = components(torch.from_numpy(mask), SMALL)
    assert [(b, int(c.sum())) for b, c in found] == [("mid", 3), ("mid", 8), ("big", 27)]
    assert np.array_equal(np.logical_or.reduce([c for _, c in found]), mask)


def test_seg_figures_match_sklearn_and_brute_force() -> None:
    cases = [_volume(s) for s in (1, 2)]
    thr = 1.0
    fig = seg_figures([(torch.from_numpy(m), k, f) for m, k, f in cases], thr, case_ap=True)
    scores = np.concatenate([m[f] for m, _, f in cases])
    y = np.concatenate([k[f] for _, k, f in cases])
    assert fig["pixel_ap"] == pytest.approx(average_precision_score(y, scores))
    assert fig["best_dice"] == pytest.approx(_best_dice(scores, y))
    assert fig["dice_at_threshold"] == pytest.approx(
        2 * np.sum((scores >= thr) & y) / (np.sum(scores >= thr) + y.sum())
    )
    assert fig["case_ap"] == pytest.approx(np.mean([average_precision_score(k[f], m[f]) for m, k, f in cases]))
    assert "case_ap" not in seg_figures(cases, thr)


def test_bucket_figures_leave_the_other_buckets_out() -> None:
    cases = [_volume(s) for s in (3, 4)]
    flagged = [np.zeros_like(k) for _, k, _ in cases]
    flagged[0][4, 4, 4] = True  # the 8-voxel lesion of case 0 flagged
    thr = 1.2
    out = bucket_figures(cases, thr, flagged, SMALL)
    assert list(out) == ["tiny", "mid", "big"]
    for b, size in (("tiny", 2), ("mid", 8), ("big", 27)):
        row = out[b]
        assert row["lesions"] == 2
        assert row["detected_flagged"] == (0.5 if b == "mid" else 0.0)
        sel = [(m, k, f) for m, k, f in cases]
        per = [next(c for bb, c in components(k, SMALL) if bb == b) for _, k, _ in sel]
        hits = [float((m[c] >= thr).any()) for (m, _, _), c in zip(sel, per)]
        assert row["detected_map"] == pytest.approx(np.mean(hits))
        keep = [f & (c | ~k) for (_, k, f), c in zip(sel, per)]  # other lesions' voxels out of the foreground
        scores = np.concatenate([m[f] for (m, _, _), f in zip(sel, keep)])
        y = np.concatenate([c[f] for c, f in zip(per, keep)])
        assert y.sum() == 2 * size
        assert row["pixel_ap"] == pytest.approx(average_precision_score(y, scores))
        assert row["best_dice"] == pytest.approx(_best_dice(scores, y))
    without = bucket_figures(cases, thr, buckets={"none": (100, 200), **SMALL})
    assert "none" not in without and "detected_flagged" not in without["big"]


def test_thresholds_volume_aurocs_ranking_and_flag_quality() -> None:
    rng = np.random.default_rng(0)
    maps = [rng.random((4, 5, 6)) for _ in range(3)]
    fgs = [m > 0.3 for m in maps]
    values = healthy_values([torch.from_numpy(m) for m in maps], fgs)
    assert np.array_equal(values, np.concatenate([m[f] for m, f in zip(maps, fgs)]))
    alpha, n = 0.1, values.size
    k = int(np.ceil((n + 1) * (1 - alpha)))  # the split-conformal order statistic
    assert healthy_map_threshold(values, alpha) == pytest.approx(np.sort(values)[k - 1])
    thin = values[:: values.size // 50]
    assert healthy_map_threshold(values, alpha, max_values=50) == pytest.approx(
        np.sort(thin)[int(np.ceil((thin.size + 1) * (1 - alpha))) - 1]
    )
    y = [0, 0, 0, 1, 1]
    scores = {"a": [0.1, 0.4, 0.35, 0.8, 0.3], "b": [5, 4, 3, 2, 1]}
    assert volume_aurocs(scores, y) == pytest.approx({"a": roc_auc_score(y, scores["a"]), "b": 0.0})
    s, t = torch.from_numpy(rng.random(40)), torch.from_numpy(rng.random(40) > 0.6)
    assert ranking(s, t) == pytest.approx({"auroc": roc_auc_score(t, s), "ap": average_precision_score(t, s)})
    f = torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool)
    target = torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool)
    assert flag_quality(f, target) == pytest.approx({"recall": 0.5, "precision": 1 / 3})
    assert flag_quality(f & False, target & False) == {"recall": 0.0, "precision": 0.0}


def test_worst_case_choice_is_the_brute_force_one() -> None:
    rng = np.random.default_rng(1)
    rows = [{"id": i, "clean": {"s": rng.random(), "g": rng.random()}, "shifted": {"s": rng.random(),
             "g": rng.random()}} for i in range(30)]  # fmt: skip
    views = lambda r: (r["clean"], r["shifted"])  # noqa: E731
    ranked = rank_worst_case(rows, views, lambda v: v["s"])
    assert [r["id"] for r in ranked] == [r["id"] for r in sorted(rows, key=lambda r: -min(v["s"] for v in views(r)))]
    slack = 0.1
    best_gate = max(min(v["g"] for v in views(r)) for r in rows)
    allowed = [r for r in rows if min(v["g"] for v in views(r)) >= best_gate - slack]
    chosen = choose_worst_case(rows, views, lambda v: v["s"], gate=lambda v: v["g"], slack=slack)
    assert chosen is max(allowed, key=lambda r: min(v["s"] for v in views(r)))
    tied = [{"v": 1.0, "id": 0}, {"v": 1.0, "id": 1}]
    assert choose_worst_case(tied, lambda r: [r], lambda r: r["v"])["id"] == 0  # ties: the first row


def test_stage_volume_cache_round_trip(tmp_path: Path) -> None:
    amap, mask, _ = _volume(5)
    path = save_stage_volumes(
        tmp_path / "c" / "case.npz",
        {"residual": torch.from_numpy(amap), "flagged": mask.astype(np.float32), "label": mask},
        seconds=2.5,
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["case.npz"]  # written atomically, no temp file left
    with np.load(path) as z:
        assert z["residual"].dtype == np.float16 and z["flagged"].dtype == np.uint8 and z["label"].dtype == np.uint8
    back = load_stage_volumes(path)
    assert back["seconds"] == 2.5 and back["label"].dtype == torch.bool
    assert torch.equal(back["label"], torch.from_numpy(mask))
    assert back["flagged"].dtype == torch.float32 and torch.equal(back["flagged"] > 0, torch.from_numpy(mask))
    assert np.allclose(back["residual"].numpy(), amap, atol=4e-3)
    healthy = load_stage_volumes(save_stage_volumes(tmp_path / "h.npz", {"residual": amap}, 1.0))
    assert healthy["label"] is None


def test_components_raster_order_and_the_shift_choice() -> None:
    """Components in raster order; medood.benchmark.mim_shift.choose is the worst case of clean and shifted (the map
    setting by its map score, then the volume score by its AUROC), written here with max()."""
    mask = _volume(6)[1]
    mask[2:4, 8:11, 0:12] = True  # a 72-voxel lesion more
    assert [(b, c.sum()) for b, c in components(mask)] == [("<500", 2), ("<500", 72), ("<500", 8), ("<500", 27)]
    rng = np.random.default_rng(2)
    sets = ("clean", "shifted")

    def figs() -> dict[str, Any]:
        return {"all": {m: rng.random() for m in ("pixel_ap", "best_dice", "dice_at_threshold")},
                "volume_auroc": {v: rng.random() for v in VOLUME_SCORES}}  # fmt: skip

    rows: list[dict[str, Any]] = [
        {"prep": p, **s, **{k: figs() for k in sets}} for p, s in itertools.product(("scale", "nyul"), GRID)
    ]
    best = max(rows, key=lambda r: min(_map_score(r[s]) for s in sets))
    worst = {k: min(best[s]["volume_auroc"][k] for s in sets) for k in VOLUME_SCORES}
    chosen = choose(rows)
    assert chosen["setting"] == {k: best[k] for k in ("prep", *SHIPPED)}
    assert chosen["volume_score"] == max(worst, key=worst.__getitem__)
    assert chosen["worst_case_volume_auroc"] == max(worst.values())


class _IdentityNet:
    """Stands in for the MIM detector in mim_shift.figures: the map is the cached residual as it is."""

    erode_mask = 1

    def postprocess_map(self, raw: torch.Tensor, image: torch.Tensor, minpool: int, avgpool: int) -> torch.Tensor:
        return raw


def test_bucket_figures_and_threshold_as_mim_shift_figures() -> None:
    rng = np.random.default_rng(8)
    vols = []
    for i in range(4):  # a healthy volume, then lesioned ones with a lesion in each of the real size buckets
        mask = np.zeros((26, 26, 26), bool)
        if i:
            mask[1:3, 1:3, 1:3] = True  # 8 voxels: < 500
            mask[4:13, 4:13, 4:13] = True  # 729: 500-1500
            mask[13:25, 14:26, 14:26] = i > 1  # 1728: > 1500
        fg = np.ones_like(mask)
        fg[0] = False
        amap = (rng.normal(0, 1, mask.shape) + 1.5 * mask * rng.random(mask.shape)).astype(np.float32)
        vols.append({"residual": torch.from_numpy(amap), "image": torch.from_numpy(fg * rng.random(fg.shape) + fg),
                     "flagged": torch.from_numpy((amap > 2.5).astype(np.float32)), "label": torch.from_numpy(mask),
                     "lesioned": int(i >= 1)})  # fmt: skip
    theirs = figures(_IdentityNet(), vols, SHIPPED, None)
    healthy = [v for v in vols if not v["lesioned"]]
    own = healthy_map_threshold(healthy_values([v["residual"] for v in healthy], [v["image"] > 0 for v in healthy]),
                                MAP_ALPHA)  # fmt: skip
    assert own == theirs["own_healthy_threshold"] == theirs["map_threshold"]
    les = [v for v in vols if v["lesioned"]]
    cases = [(v["residual"], v["label"], v["image"] > 0) for v in les]
    ours = bucket_figures(cases, own, [v["flagged"] for v in les])
    assert list(ours) == list(SIZE_BUCKETS) and [ours[b]["lesions"] for b in SIZE_BUCKETS] == [3, 3, 2]
    assert 0 < ours[">1500"]["detected_flagged"] <= 1
    for b, row in ours.items():
        assert row == theirs[b]


def test_mim_tuning_figures_and_choice() -> None:
    cases = [_volume(s) for s in (20, 21, 22, 23)]
    hmaps = [torch.from_numpy(m)[None, None] for m, _, _ in cases[:2]]
    lmaps = [torch.from_numpy(m)[None, None] for m, _, _ in cases[2:]]
    healthy = [{"image": torch.from_numpy(f.astype(np.float32))[None]} for _, _, f in cases[:2]]
    lesioned = [
        {"image": torch.from_numpy(f.astype(np.float32))[None], "label": torch.from_numpy(k.astype(np.float32))[None]}
        for _, k, f in cases[2:]
    ]
    fig = tune.figures(hmaps, lmaps, healthy, lesioned, 99.0)
    hv = np.concatenate([m[f] for m, _, f in cases[:2]])
    assert fig["map_threshold"] == pytest.approx(np.quantile(hv, 0.99), rel=1e-5)
    scores = np.concatenate([m[f] for m, _, f in cases[2:]])
    y = np.concatenate([k[f] for _, k, f in cases[2:]])
    assert fig["pixel_ap"] == pytest.approx(average_precision_score(y, scores))
    thr = fig["map_threshold"]
    assert fig["dice_at_healthy_threshold"] == pytest.approx(
        2 * np.sum((scores >= thr) & y) / (np.sum(scores >= thr) + y.sum())
    )
    assert list(fig) == ["pixel_ap", "best_dice", "dice_at_healthy_threshold", "case_ap", "map_threshold"]
    rng = np.random.default_rng(3)
    rows = [{"pixel_ap": rng.random(), "best_dice": rng.random(), "dice_at_healthy_threshold": rng.random(),
             "volume_auroc": rng.random()} for _ in range(20)]  # fmt: skip
    for r in rows:
        r["shifted"] = {k: rng.random() for k in ("pixel_ap", "best_dice", "dice_at_healthy_threshold", "volume_auroc")}
    best = max(r["volume_auroc"] for r in rows)
    expect = sorted((r for r in rows if r["volume_auroc"] >= best - 0.2), key=tune.score, reverse=True)[:3]
    assert tune.select(rows, 0.2, 3) == expect
    worst = [min(r["volume_auroc"], r["shifted"]["volume_auroc"]) for r in rows]
    ok = [r for r, a in zip(rows, worst) if a >= max(worst) - 0.2]
    assert tune.choose(rows, 0.2) is max(ok, key=lambda r: min(tune.score(r), tune.score(r["shifted"])))


def test_percentile_table_is_numpys_on_the_first_values() -> None:
    v = np.random.default_rng(4).gamma(2.0, size=(30, 40))
    table = percentile_table(torch.from_numpy(v), (50, 95, 99.5))
    assert list(table) == [50, 95, 99.5]
    assert table == pytest.approx({p: np.percentile(v, p) for p in (50, 95, 99.5)})
    capped = percentile_table(v, [90], max_values=100)
    assert capped[90] == pytest.approx(np.percentile(v.ravel()[:100], 90))


PAGES = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"


def test_committed_choices_recomputed_from_their_json() -> None:
    """The moved selection rules give the committed choices from the committed rows (no rerun needed)."""
    report = json.loads((PAGES / "mim_validation_tuning.json").read_text())
    checked = report["candidates_checked_on_shift"]
    assert tune.choose(checked, 0.05) == report["selected"]
    candidates = tune.select(report["results"], 0.05, len(checked))
    assert len(candidates) == len(checked) and all(map(tune.same_setting, candidates, checked))
    shift = json.loads((PAGES / "mim_shift.json").read_text())
    for det, rows in shift["sweep"].items():
        assert choose(rows) == shift["chosen"][det]


def _map_score(f: dict[str, Any]) -> float:
    return float(np.mean([f["all"]["pixel_ap"], f["all"]["best_dice"], f["all"]["dice_at_threshold"]]))
