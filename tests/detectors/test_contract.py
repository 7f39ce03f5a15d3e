"""The contract every registered detector honours, parametrised over ``list_detectors()`` x spatial dims."""

from __future__ import annotations

import functools
import io

import pytest
import torch

from medood.detectors import NotFittedError, get_detector_class, list_detectors
from tests.detectors.recipes import RECIPES

CASES = [(name, sd) for name in list_detectors() for sd in get_detector_class(name).supported_spatial_dims]


def _fit(name: str, sd: int):
    torch.manual_seed(0)
    det = RECIPES[name].make(sd)
    RECIPES[name].fit(det, sd)
    return det.eval()


@functools.cache
def _fitted(name: str, sd: int):
    """One fitted detector per case, shared by the tests of this module (they only read it)."""
    return _fit(name, sd)


def _direction_cases() -> list:
    out = []
    for name, sd in CASES:
        reason = RECIPES[name].known_direction_failures.get(sd) if name in RECIPES else None
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        out.append(pytest.param(name, sd, marks=marks))
    return out


def test_every_detector_has_a_recipe() -> None:
    missing = sorted(set(list_detectors()) - set(RECIPES))
    assert not missing, f"registered detectors without a contract-test recipe: {missing}"


def test_registry_attributes() -> None:
    for name in list_detectors():
        cls = get_detector_class(name)
        assert cls.name == name
        assert set(cls.supported_spatial_dims) <= {1, 2, 3}, cls
        assert isinstance(cls.produces_map, bool)
        assert isinstance(cls.requires_fit, bool)


@pytest.mark.parametrize(("name", "sd"), CASES)
def test_not_fitted_error(name: str, sd: int) -> None:
    det = RECIPES[name].make(sd)
    if not det.requires_fit:
        assert det.is_fitted
        return
    assert not det.is_fitted
    with pytest.raises(NotFittedError):
        det.score(RECIPES[name].id_batch(sd))


@pytest.mark.parametrize(("name", "sd"), _direction_cases())
def test_higher_score_on_obviously_shifted_inputs(name: str, sd: int) -> None:
    recipe = RECIPES[name]
    det = _fitted(name, sd)
    with torch.no_grad():
        s_id, s_ood = det.score(recipe.id_batch(sd)).image_score, det.score(recipe.ood_batch(sd)).image_score
    assert s_ood.mean() > s_id.mean(), f"{name}: OOD mean {s_ood.mean():.4g} <= ID mean {s_id.mean():.4g}"


@pytest.mark.parametrize(("name", "sd"), CASES)
def test_shapes_roundtrip_determinism(name: str, sd: int) -> None:
    recipe = RECIPES[name]
    det = _fitted(name, sd)
    x_id, x_ood = recipe.id_batch(sd), recipe.ood_batch(sd)
    with torch.no_grad():
        out_id, out_ood = det.score(x_id), det.score(x_ood)

    # shapes and dtypes
    assert out_id.image_score.shape == (x_id.shape[0],)
    assert torch.isfinite(out_id.image_score).all()
    assert torch.isfinite(out_ood.image_score).all()
    if det.produces_map:
        assert out_id.anomaly_map is not None
        assert out_id.anomaly_map.shape == (x_id.shape[0], 1, *x_id.shape[2:])
        assert out_id.anomaly_map.dtype == torch.float32
        assert torch.isfinite(out_id.anomaly_map).all()
        assert det.predict_map(x_id).shape == out_id.anomaly_map.shape
    else:
        assert out_id.anomaly_map is None
        with pytest.raises(NotImplementedError):
            det.predict_map(x_id)

    # state_dict -> bytes -> torch.load(weights_only=True) -> a fresh instance scores identically
    buf = io.BytesIO()
    torch.save(det.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = recipe.make(sd)
    fresh.load_state_dict(state)
    fresh.eval()
    assert fresh.is_fitted
    with torch.no_grad():
        torch.testing.assert_close(fresh.score(x_id).image_score, out_id.image_score)

    # determinism: the same seed gives the same fitted detector
    again = _fit(name, sd)
    with torch.no_grad():
        torch.testing.assert_close(again.score(x_ood).image_score, out_ood.image_score)
