"""NERO against an independent float64 numpy reference written from methods.md §4.3-4.4, and the ``k`` option.

The reference below was written from the formulas alone (not from ``medood/detectors/nero.py``):
``R_j = sum_c p_c z_{c,j} / z_c`` with ``a' = [a, 1]``, ``W' = [W | b]``; PCA (centred SVD) of the training
``R[:D]`` to ``int(2D/3)`` components; class means; ``s = mean_train min_c ||R - mu~_c||_1 / mean_train |R_b|``;
``NERO = (min_c ||PCA(R[:D]) - mu_c||_1 + s |R_b|) * ||a_K||_1 / ||a||_1`` over the ``k`` least relevant neurons.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from medood.detectors import NERODetector

ROOT = Path(__file__).resolve().parents[2]


def _relevance(a: np.ndarray, w: np.ndarray, b: np.ndarray, logits: np.ndarray, eps: float) -> np.ndarray:
    contrib = np.concatenate([a, np.ones((len(a), 1))], 1)[:, None, :] * np.concatenate([w, b[:, None]], 1)[None]
    z = contrib.sum(-1)
    z = z + eps * np.where(z >= 0, 1.0, -1.0)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return np.sum(p[:, :, None] * contrib / z[:, :, None], axis=1)


def _reference(train: dict, labels: np.ndarray, test: dict, w: np.ndarray, b: np.ndarray, k: int, eps: float) -> dict:
    """NERO terms of ``test`` in float64: ``{"d_rel", "bias", "g", "score", "s"}``."""
    r_tr = _relevance(train["features"], w, b, train["logits"], eps)
    r_te = _relevance(test["features"], w, b, test["logits"], eps)
    d = train["features"].shape[1]
    mean = r_tr[:, :d].mean(0)
    basis = np.linalg.svd(r_tr[:, :d] - mean, full_matrices=False)[2][: int(2 * d / 3)].T
    classes = np.unique(labels)
    centres = np.stack([((r_tr[labels == c, :d] - mean) @ basis).mean(0) for c in classes])
    d_rel = np.abs(((r_te[:, :d] - mean) @ basis)[:, None] - centres[None]).sum(-1).min(1)
    raw = np.stack([r_tr[labels == c].mean(0) for c in classes])
    s = np.abs(r_tr[:, None] - raw[None]).sum(-1).min(1).mean() / np.abs(r_tr[:, d]).mean()
    a = np.abs(test["features"])
    least = np.argsort(r_te[:, :d], axis=1, kind="stable")[:, :k]
    g = np.take_along_axis(a, least, 1).sum(1) / a.sum(1)
    bias = s * np.abs(r_te[:, d])
    return {"d_rel": d_rel, "bias": bias, "g": g, "score": (d_rel + bias) * g, "s": s}


def _random_problem(seed: int, n: int = 90, d: int = 24, c: int = 3) -> tuple[dict, np.ndarray, dict, np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(c, d)) / np.sqrt(d), rng.normal(scale=0.5, size=c)
    labels = np.arange(n) % c
    centres = np.maximum(rng.normal(1.0, 1.0, size=(c, d)), 0)
    train_a = np.maximum(centres[labels] + 0.5 * rng.normal(size=(n, d)), 0)
    test_a = np.maximum(rng.normal(1.0, 1.5, size=(20, d)), 0)
    # drop rows with a logit near 0: there LRP-0 is ill-conditioned and float32 cannot match float64
    keep_tr, keep_te = (np.abs(x @ w.T + b).min(1) > 0.05 for x in (train_a, test_a))
    train_a, labels, test_a = train_a[keep_tr], labels[keep_tr], test_a[keep_te]
    train = {"features": train_a, "logits": train_a @ w.T + b}
    test = {"features": test_a, "logits": test_a @ w.T + b}
    return train, labels, test, w, b


def _torch(f: dict) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).float() for k, v in f.items()}


@pytest.mark.parametrize(("seed", "k", "eps"), [(0, 8, 0.0), (1, 8, 1e-6), (2, 175, 1e-6), (3, 1, 0.0)])
def test_random_heads_match_the_float64_reference(seed: int, k: int, eps: float) -> None:
    train, labels, test, w, b = _random_problem(seed)
    assert len(test["features"]) >= 10 and len(np.unique(labels)) == 3
    det = NERODetector(weight=torch.from_numpy(w).float(), bias=torch.from_numpy(b).float(), k=k, eps=eps)
    det.fit_features(_torch(train), torch.from_numpy(labels))
    ref = _reference(train, labels, test, w, b, min(k, 24), eps)
    out = det.score_features(_torch(test))
    a, rel = det.relevance(_torch(test))
    assert float(det.bias_scale) == pytest.approx(ref["s"], rel=1e-3)
    np.testing.assert_allclose(det.relevance_distance(rel[:, :24]).numpy(), ref["d_rel"], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(det.feature_norm_term(a, rel[:, :24], min(k, 24)).numpy(), ref["g"], rtol=1e-4)
    np.testing.assert_allclose(out.image_score.numpy(), ref["score"], rtol=1e-3, atol=1e-5)


def test_k_at_least_d_makes_the_norm_term_one_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    train, labels, test, w, b = _random_problem(4)
    make = lambda k: NERODetector(weight=torch.from_numpy(w).float(), bias=torch.from_numpy(b).float(), k=k)  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="medood.detectors.nero"):
        full = make(175).fit_features(_torch(train), torch.from_numpy(labels))
    assert "g(x) = 1" in caplog.text
    a, rel = full.relevance(_torch(test))
    torch.testing.assert_close(full.feature_norm_term(a, rel[:, :24], full.neurons_kept(24)), torch.ones(len(a)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medood.detectors.nero"):
        part = make(8).fit_features(_torch(train), torch.from_numpy(labels))
    assert "g(x) = 1" not in caplog.text
    g = part.feature_norm_term(a, rel[:, :24], part.neurons_kept(24))
    assert bool((g < 1).all()) and float(g.std()) > 1e-3


def test_k_above_d_is_a_recorded_clamp_also_for_a_loaded_detector(caplog: pytest.LogCaptureFixture) -> None:
    """k = 175 > D = 24: the clamp is recorded (k_effective, norm_term_active) and logged when a loaded detector
    scores (the old code only warned at fit, so a shipped detector turned its norm term off silently)."""
    train, labels, test, w, b = _random_problem(6)
    make = lambda k: NERODetector(weight=torch.from_numpy(w).float(), bias=torch.from_numpy(b).float(), k=k)  # noqa: E731
    fitted = make(175).fit_features(_torch(train), torch.from_numpy(labels))
    assert (fitted.k_effective, fitted.norm_term_active) == (24, False)
    loaded = make(175)
    loaded.load_state_dict(fitted.state_dict())
    loaded.mark_fitted()
    assert loaded.k_effective is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medood.detectors.nero"):
        loaded.score_features(_torch(test))
        loaded.score_features(_torch(test))
    assert caplog.text.count("clamped to k_effective = 24") == 1, "logged once per D, at the first score"
    assert (loaded.k_effective, loaded.norm_term_active) == (24, False)
    small = make(8).fit_features(_torch(train), torch.from_numpy(labels))
    assert (small.k_effective, small.norm_term_active) == (8, True)


def test_fractional_k_scales_with_d_and_bad_k_is_rejected() -> None:
    assert NERODetector(weight=torch.zeros(3, 128), k=175 / 512).neurons_kept(128) == 44
    assert NERODetector(weight=torch.zeros(3, 512), k=175 / 512).neurons_kept(512) == 175
    assert NERODetector(weight=torch.zeros(3, 4), k=0.01).neurons_kept(4) == 1
    train, labels, test, w, b = _random_problem(5)
    wt, bt = torch.from_numpy(w).float(), torch.from_numpy(b).float()
    frac = NERODetector(weight=wt, bias=bt, k=0.25).fit_features(_torch(train), torch.from_numpy(labels))
    count = NERODetector(weight=wt, bias=bt, k=6).fit_features(_torch(train), torch.from_numpy(labels))
    torch.testing.assert_close(
        frac.score_features(_torch(test)).image_score, count.score_features(_torch(test)).image_score
    )
    for bad in (0, 0.0, 1.0, 1.5, -0.2, True):
        with pytest.raises(ValueError, match="k an int"):
            NERODetector(weight=wt, bias=bt, k=bad)


def test_demo_endoscopy_features_match_the_reference(tmp_path: Path) -> None:
    from medood.data.classification import class_folder_loader
    from medood.detectors.posthoc import extract_features
    from medood.networks.classifiers import build_classifier
    from medood.utils.checkpoints import load_state as load_weights

    bundle = ROOT / "bundles" / "nero_endoscopy_ood_classification"
    classes = ["normal_mucosa", "polyp", "ulcer_inflammation"]
    net = load_weights(build_classifier("resnet10", 3), bundle / "models" / "model.pt").eval()
    from medood.data.demo import build_demo

    build_demo(tmp_path, size="small", seed=0, only=["endoscopy"])  # the demo set the bundle was trained on
    data = tmp_path / "endoscopy"
    with torch.no_grad():
        train, labels = extract_features(net, class_folder_loader(data, "train", 64, classes, batch_size=64)[0])
        test, _ = extract_features(net, class_folder_loader(data, "test", 64, classes, batch_size=64)[0])
    assert labels is not None
    det = NERODetector(model=net).fit_features(train, labels)
    head = det.head_weight.double().numpy(), det.head_bias.double().numpy()
    as_np = lambda f: {k: v.double().numpy() for k, v in f.items()}  # noqa: E731
    ref = _reference(as_np(train), labels.numpy(), as_np(test), *head, k=175, eps=1e-6)
    np.testing.assert_allclose(ref["g"], 1.0)  # D = 128 <= k = 175: the norm term is off, as in the official code
    assert float(det.bias_scale) == pytest.approx(ref["s"], rel=1e-3)
    np.testing.assert_allclose(det.score_features(test).image_score.numpy(), ref["score"], rtol=2e-3, atol=1e-5)
