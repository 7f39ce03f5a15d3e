"""The registry-wide detector contract, as functions: the contract test runs them over every registered detector.

Each detector supplies its own tiny example (:meth:`OODDetector.tiny_config`); the only things chosen here are
the toy data: detectors with a host classifier (``needs_model``) get the trained toy classifier, detectors with
training stages a few toy images to train on, detectors scored from an anomaly map an artefact (a bright block)
as OOD and the others (image-level scores, or a map that only explains the score: ``score_from_map = False``)
blob-free noise. A new detector file is covered with no edit here.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import Tensor

from medood.detectors import NotFittedError, OODDetector, detector_classes, get_detector_class
from medood.engines.fit import fit_detector as fit_trainer
from tests.detectors.posthoc_utils import KNOWN_DIRECTION_FAILURES
from tests.helpers import toy


def contract_cases() -> list[tuple[str, int]]:
    """``(name, spatial_dims)`` for every registered detector and every dimensionality it supports."""
    return [(cls.name, sd) for cls in detector_classes() for sd in cls.supported_spatial_dims]


def make_detector(name: str, sd: int) -> OODDetector:
    """An unfitted tiny instance (the same call rebuilds an identical unfitted instance)."""
    cls = get_detector_class(name)
    kwargs = cls.tiny_config(sd)
    if cls.needs_model:
        kwargs["model"] = toy.trained_classifier(sd)
    return cls(**kwargs)


def fit_detector(name: str, sd: int) -> OODDetector:
    """A seeded, fitted tiny instance in eval mode."""
    torch.manual_seed(0)
    det = make_detector(name, sd)
    trained = bool(det.training_stages())
    loader = toy.id_loader(sd, n=48 if sd == 2 else 12, batch_size=12) if trained else toy.id_loader(sd)
    det.fit(loader, trainer=fit_trainer if trained else None)  # the engines' training step (no global backend)
    return det.eval()


def id_batch(sd: int) -> Tensor:
    return toy.blob_images(sd, 12, seed=7)[0]


def ood_batch(name: str, sd: int) -> Tensor:
    """A local artefact for detectors scored from an anomaly map; no class evidence at all for image-level scores
    (including detectors whose map only explains the score, ``score_from_map = False``)."""
    cls = get_detector_class(name)
    if cls.produces_map and cls.score_from_map:
        return toy.artefact_images(sd, 12, seed=7)
    return toy.ood_images(sd, 12, seed=7)


def direction_params() -> list:
    """``contract_cases()`` with a strict xfail where the method ranks the toy OOD data low for a known reason."""
    out = []
    for name, sd in contract_cases():
        dims, reason = KNOWN_DIRECTION_FAILURES.get(name, (set(), ""))
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if sd in dims else []
        out.append(pytest.param(name, sd, marks=marks))
    return out


def check_registry_attributes(name: str) -> None:
    cls = get_detector_class(name)
    assert cls.name == name
    assert set(cls.supported_spatial_dims) <= {1, 2, 3}, cls
    flags = ("produces_map", "requires_fit", "requires_training", "needs_model", "needs_input_grad", "score_from_map")
    for flag in flags:
        assert isinstance(getattr(cls, flag), bool), f"{name}.{flag}"
    det = make_detector(name, cls.supported_spatial_dims[0])
    assert bool(det.training_stages()) == cls.requires_training, f"{name}: requires_training vs declared stages"
    for stage in det.training_stages():
        assert isinstance(det.stage_network(stage.name), torch.nn.Module), f"{name}: stage {stage.name}"


def check_not_fitted(name: str, sd: int) -> None:
    det = make_detector(name, sd)
    if not det.requires_fit:
        assert det.is_fitted
        return
    assert not det.is_fitted
    with pytest.raises(NotFittedError):
        det.score(id_batch(sd))


def check_direction(det: OODDetector, name: str, sd: int) -> None:
    with torch.no_grad():
        s_id, s_ood = det.score(id_batch(sd)).image_score, det.score(ood_batch(name, sd)).image_score
    assert s_ood.mean() > s_id.mean(), f"{name}: OOD mean {s_ood.mean():.4g} <= ID mean {s_id.mean():.4g}"


def check_outputs(det: OODDetector, name: str, sd: int) -> None:
    """Shapes, dtypes, finiteness, the map/score consistency, a weights-only state round trip, determinism."""
    x_id, x_ood = id_batch(sd), ood_batch(name, sd)
    with torch.no_grad():
        out_id, out_ood = det.score(x_id), det.score(x_ood)
    assert out_id.image_score.shape == (x_id.shape[0],)
    assert torch.isfinite(out_id.image_score).all() and torch.isfinite(out_ood.image_score).all()
    if det.produces_map:
        amap = out_id.anomaly_map
        assert amap is not None and amap.shape == (x_id.shape[0], 1, *x_id.shape[2:])
        assert amap.dtype == torch.float32 and torch.isfinite(amap).all()
        torch.testing.assert_close(det.predict_map(x_id), amap)
        if det.score_from_map:
            torch.testing.assert_close(det.map_score(amap, x_id), out_id.image_score)  # one definition of the score
        else:  # the map explains the score; it is not reduced into it
            with pytest.raises(NotImplementedError):
                det.map_score(amap, x_id)
    else:
        assert out_id.anomaly_map is None
        with pytest.raises(NotImplementedError):
            det.predict_map(x_id)

    buf = io.BytesIO()
    torch.save(det.state_dict(), buf)
    buf.seek(0)
    fresh = make_detector(name, sd)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    fresh.eval()
    assert fresh.is_fitted
    with torch.no_grad():
        torch.testing.assert_close(fresh.score(x_id).image_score, out_id.image_score)

    again = fit_detector(name, sd)  # the same seed gives a bit-identical fitted detector: scores and maps
    with torch.no_grad():
        rerun = again.score(x_ood)
    assert torch.equal(rerun.image_score, out_ood.image_score), f"{name}: scores differ between two seeded runs"
    if det.produces_map:
        assert out_ood.anomaly_map is not None and rerun.anomaly_map is not None
        assert torch.equal(rerun.anomaly_map, out_ood.anomaly_map), f"{name}: maps differ between two seeded runs"
