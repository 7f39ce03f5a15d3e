"""Property-based tests (hypothesis): metrics against scikit-learn and their invariances, map reductions, and the
savers' array / affine round trip."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, roc_curve

from medood.data.image2d import read_image_2d, read_map_nifti_2d, write_map_nifti_2d, write_png
from medood.data.readers import load_volume
from medood.handlers.writers import write_map_nifti
from medood.metrics import aupr_in, aupr_out, auroc, average_precision, fpr_at_tpr
from medood.metrics.segmentation import best_dice, dice_at_threshold, pixel_ap, pixel_auroc
from medood.utils.reduce import reduce_map, reduce_slices

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# scores on a coarse grid, so ties are frequent; both classes always present
scored = st.lists(st.tuples(st.integers(0, 12), st.booleans()), min_size=2, max_size=60).filter(
    lambda rows: 0 < sum(y for _, y in rows) < len(rows)
)


def _arrays(rows: list[tuple[int, bool]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([s / 4.0 for s, _ in rows]), np.array([int(y) for _, y in rows])


def _metrics(s: np.ndarray, y: np.ndarray) -> list[float]:
    return [
        auroc(s, y),
        aupr_in(s, y),
        aupr_out(s, y),
        fpr_at_tpr(s, y),
        fpr_at_tpr(s, y, 0.8, positive="ood"),
    ]


def _sk_fpr(s: np.ndarray, y: np.ndarray, tpr: float, positive: str) -> float:
    target, score = (y, s) if positive == "ood" else (1 - y, -s)
    fpr, tprs, _ = roc_curve(target, score, drop_intermediate=False)
    return float(fpr[tprs >= tpr].min())


# ------------------------------------------------------------------------------------------------------ metrics
@SETTINGS
@given(scored, st.floats(0.05, 1.0))
def test_image_metrics_equal_sklearn(rows: list[tuple[int, bool]], tpr: float) -> None:
    s, y = _arrays(rows)
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert aupr_out(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert aupr_in(s, y) == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    for positive in ("ood", "id"):
        assert fpr_at_tpr(s, y, tpr, positive=positive) == pytest.approx(_sk_fpr(s, y, tpr, positive), abs=1e-12)


@SETTINGS
@given(scored, st.sampled_from(["affine", "exp", "cube", "arctan"]), st.randoms(use_true_random=False))
def test_metrics_are_invariant_to_monotone_transforms_and_order(rows, transform: str, rnd) -> None:
    s, y = _arrays(rows)
    f = {"affine": lambda v: 3.0 * v + 7.0, "exp": np.exp, "cube": lambda v: (v - 1.0) ** 3, "arctan": np.arctan}
    assert _metrics(f[transform](s), y) == pytest.approx(_metrics(s, y), abs=1e-12)
    order = list(range(len(s)))
    rnd.shuffle(order)
    assert _metrics(s[order], y[order]) == pytest.approx(_metrics(s, y), abs=1e-12)


@SETTINGS
@given(scored)
def test_metric_symmetries_and_ranges(rows: list[tuple[int, bool]]) -> None:
    s, y = _arrays(rows)
    assert auroc(-s, y) == pytest.approx(1.0 - auroc(s, y), abs=1e-12)
    assert aupr_in(s, y) == pytest.approx(aupr_out(-s, 1 - y), abs=1e-12)
    fprs = [fpr_at_tpr(s, y, t, positive="ood") for t in (0.2, 0.5, 0.8, 0.95, 1.0)]
    assert fprs == sorted(fprs), "a higher TPR never costs a lower FPR"
    assert all(0.0 <= m <= 1.0 for m in _metrics(s, y))


cases = st.lists(
    st.tuples(
        hnp.arrays(np.float32, (3, 4), elements=st.integers(0, 6).map(float)),
        hnp.arrays(np.bool_, (3, 4)),
        hnp.arrays(np.bool_, (3, 4)),
    ),
    min_size=1,
    max_size=3,
)


def _pooled(data: list) -> tuple[np.ndarray, np.ndarray]:
    s = np.concatenate([m[f] for m, _, f in data])
    y = np.concatenate([g[f] for _, g, f in data]).astype(int)
    return s, y


@SETTINGS
@given(cases, st.integers(0, 7))
def test_voxel_metrics_equal_sklearn_on_the_pooled_foreground(data: list, t: int) -> None:
    s, y = _pooled(data)
    assume(0 < y.sum() < y.size)
    maps, masks, fg = ([c[i] for c in data] for i in range(3))
    assert pixel_ap(maps, masks, fg) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert pixel_auroc(maps, masks, fg) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    dice = dice_at_threshold(maps, masks, float(t), fg)
    assert dice.pooled == pytest.approx(f1_score(y, s >= t, zero_division=0.0), abs=1e-12)
    best = best_dice(maps, masks, fg)
    brute = max(f1_score(y, s >= u, zero_division=0.0) for u in [*np.unique(s), np.inf])
    assert best.dice == pytest.approx(brute, abs=1e-12) and best.dice >= dice.pooled - 1e-12
    assert f1_score(y, s >= best.threshold, zero_division=0.0) == pytest.approx(best.dice, abs=1e-12)


# --------------------------------------------------------------------------------------------------- reductions
maps_and_masks = st.integers(1, 3).flatmap(
    lambda b: st.tuples(
        hnp.arrays(np.float32, (b, 1, 4, 5), elements=st.floats(-10, 10, width=32)),
        hnp.arrays(np.bool_, (b, 1, 4, 5)),
    )
)


@SETTINGS
@given(maps_and_masks, st.one_of(st.integers(1, 25), st.floats(0.01, 0.99)))
def test_max_ge_topk_ge_mean_over_the_same_foreground(data, k) -> None:
    amap, fg = (torch.from_numpy(a) for a in data)
    mx, top, mean = (reduce_map(amap, r, k=k, mask=fg) for r in ("max", "topk", "mean"))
    has_fg = fg.flatten(1).any(1)
    assert torch.all(mx[has_fg] >= top[has_fg] - 1e-4) and torch.all(top[has_fg] >= mean[has_fg] - 1e-4)
    assert torch.all(mx[~has_fg] == 0) and torch.all(top[~has_fg] == 0) and torch.all(mean[~has_fg] == 0)
    for b in range(amap.shape[0]):
        inside = amap[b][fg[b]]
        if inside.numel():
            assert float(mx[b]) == pytest.approx(float(inside.max()))
            assert float(mean[b]) == pytest.approx(float(inside.mean()), abs=1e-4)


@SETTINGS
@given(maps_and_masks, st.floats(-1e6, 1e6, width=32))
def test_reductions_ignore_the_background(data, fill: float) -> None:
    amap, fg = (torch.from_numpy(a) for a in data)
    changed = amap.masked_fill(~fg, fill)
    for r in ("max", "topk", "mean"):
        assert torch.equal(reduce_map(amap, r, k=3, mask=fg), reduce_map(changed, r, k=3, mask=fg))
    everything = torch.ones_like(fg)
    assert torch.equal(reduce_map(amap, "max"), reduce_map(amap, "max", mask=everything))
    assert torch.allclose(reduce_map(amap, "topk", k=1), reduce_map(amap, "max"))
    assert torch.allclose(reduce_map(amap, "topk", k=20), reduce_map(amap, "mean"), atol=1e-4)


@SETTINGS
@given(maps_and_masks, st.sampled_from([0, 1, -1]))
def test_slice_maxima_agree_with_the_volume_maximum(data, axis: int) -> None:
    """Slices without foreground score 0 (documented); the best slice with foreground holds the volume maximum."""
    amap, fg = (torch.from_numpy(a) for a in data)
    per_slice = reduce_slices(amap, axis, "max", mask=fg)
    slice_has_fg = fg.movedim(2 + axis % 2, 2).flatten(3).any(3)[:, 0]  # (B, n_slices)
    volume = reduce_map(amap, "max", mask=fg)
    for b in range(amap.shape[0]):
        assert torch.all(per_slice[b][~slice_has_fg[b]] == 0)
        if slice_has_fg[b].any():
            assert float(per_slice[b][slice_has_fg[b]].max()) == float(volume[b])


# ------------------------------------------------------------------------------------------------------- savers
@st.composite
def affines(draw: st.DrawFn) -> np.ndarray:
    """A random valid voxel-to-world affine: a rotation (possibly with a flip), positive spacings, a shift."""
    q, _ = np.linalg.qr(np.asarray(draw(hnp.arrays(np.float64, (3, 3), elements=st.floats(-1, 1)))))
    assume(abs(np.linalg.det(q)) > 0.5)
    spacing = draw(hnp.arrays(np.float64, (3,), elements=st.floats(0.2, 5.0)))
    shift = draw(hnp.arrays(np.float64, (3,), elements=st.floats(-200, 200)))
    a = np.eye(4)
    a[:3, :3] = q @ np.diag(spacing)
    a[:3, 3] = shift
    return a


volumes = hnp.array_shapes(min_dims=3, max_dims=3, min_side=2, max_side=6).flatmap(
    lambda shape: hnp.arrays(np.float32, shape, elements=st.floats(-1e3, 1e3, width=32))
)


@SETTINGS
@given(volumes, affines())
def test_map_nifti_round_trip_keeps_array_and_affine(tmp_path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    assume(float(data.max()) > float(data.min()))
    path = write_map_nifti(data, affine, tmp_path / "case_anomaly_map.nii.gz")
    img = nib.load(path)
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)
    np.testing.assert_allclose(img.affine, affine, rtol=1e-5, atol=1e-4)
    loaded = load_volume(path)  # medood's own reader: same voxels, same geometry (no header "correction")
    np.testing.assert_array_equal(loaded[0].numpy(), data)
    np.testing.assert_allclose(loaded.affine.numpy(), affine, rtol=1e-5, atol=1e-4)


@SETTINGS
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9),
        elements=st.floats(-5, 5, width=32),
    )
)
def test_2d_map_round_trip(tmp_path: Path, data: np.ndarray) -> None:
    path = write_map_nifti_2d(data, tmp_path / "img_anomaly_map.nii.gz")
    np.testing.assert_array_equal(read_map_nifti_2d(path), data)
    np.testing.assert_array_equal(nib.load(path).affine, np.diag([-1.0, -1.0, 1.0, 1.0]))


@SETTINGS
@given(hnp.arrays(np.uint8, st.tuples(st.sampled_from([1, 3]), st.integers(1, 9), st.integers(1, 9))))
def test_png_round_trip(tmp_path: Path, data: np.ndarray) -> None:
    path = write_png(data, tmp_path / "img.png")
    np.testing.assert_array_equal(read_image_2d(path).numpy(), data.astype(np.float32))
