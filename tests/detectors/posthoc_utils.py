"""Shared helpers of the post-hoc detector tests: toy features, streaming fits, state_dict round trips."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from medood.detectors import OODDetector


def toy_features(
    n: int = 60, d: int = 16, c: int = 3, seed: int = 0
) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
    """``({"features", "logits"}, labels, weight, bias)``: ReLU'd class-conditional Gaussians and a linear head."""
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.rand(c, d, generator=g)
    labels = torch.arange(n) % c
    feats = (centres[labels] + 0.4 * torch.randn(n, d, generator=g)).clamp_min(0)
    weight = torch.randn(c, d, generator=g)
    bias = 0.5 * torch.randn(c, generator=g)
    return {"features": feats, "logits": feats @ weight.T + bias}, labels, weight, bias


def fit_in_batches(det: OODDetector, features: dict[str, Tensor], labels: Tensor | None, size: int) -> OODDetector:
    """Fit the way ``OODDetector.fit`` streams a loader: ``partial_fit_features`` per batch of ``size`` rows."""
    det.reset_fit()
    n = next(iter(features.values())).shape[0]
    for i in range(0, n, size):
        det.partial_fit_features(
            {k: v[i : i + size] for k, v in features.items()}, None if labels is None else labels[i : i + size]
        )
    det.finalize_fit()
    det.mark_fitted()
    return det


def roundtrip(det: OODDetector, make: Callable[[], OODDetector]) -> OODDetector:
    """``state_dict`` -> bytes -> ``torch.load(weights_only=True)`` -> a fresh instance from ``make``."""
    buf = io.BytesIO()
    torch.save(det.state_dict(), buf)
    buf.seek(0)
    fresh = make()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    return fresh


def buffer_shapes(det: OODDetector) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in det.state_dict().items()}


def assert_same_state(a: OODDetector, b: OODDetector, atol: float = 1e-5) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=1e-4, equal_nan=True, msg=f"buffer {k} differs")


# Detectors that rank the toy OOD data (blob-free speckle noise) *below* ID in one dimensionality, for a
# principled reason of the method on this toy classifier. Reported to the lead, not tuned away.
KNOWN_DIRECTION_FAILURES: dict[str, tuple[set[int], str]] = {
    "gradnorm": ({3}, "3D toy: speckle noise gives larger feature L1 norms and GradNorm ~ ||a||_1 (AUROC 0.0)"),
    "nero": ({2}, "2D toy: ID logits near zero inflate LRP-0 relevance; OOD relevance is small (AUROC 0.08)"),
    **{
        name: (
            {3},
            "3D toy: speckle noise gives larger penultimate activations than ID (mean L1 norm 104 vs 76) and "
            f"{how} keeps that magnitude in the score (AUROC 0.0; plain energy, SCALE, fDBD, RMD rank it right)",
        )
        for name, how in {
            "ash": "ASH-S's pruning to the top 2 of 16 units and exp(s1/s2) sharpening",
            "ash_b": "ASH-B's binarised top units (value s1/k)",
            "ash_p": "ASH-P's pruning to the top units",
            "dice": "DICE's sparsified head",
            "she": "SHE's inner product with the class pattern",
        }.items()
    },
    "react": ({3}, "3D toy: ID class evidence sits in the top activations that the p90 clip removes (AUROC 0.33)"),
    "mc_dropout": (
        {2, 3},
        "toy classifier: test-time dropout on its 16 penultimate features flips the ID predictions more than the "
        "noise ones (mean variance 0.315 ID vs 0.306 OOD in 2D, 0.31 vs 0.13 in 3D; AUROC 0.49 and 0.22)",
    ),
}


def np_logsumexp(x: np.ndarray) -> np.ndarray:
    """Row-wise ``log(sum(exp(x)))`` in float64 numpy (an independent reference for the energy scores)."""
    x = np.asarray(x, dtype=np.float64)
    top = x.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))[:, 0]


def assert_loader_fit_equals_fit_features(
    make: Callable[[torch.nn.Module], OODDetector], compare_state: bool = True
) -> tuple[OODDetector, OODDetector]:
    """``det.fit(loader)`` (streaming, several batches) equals ``fit_features`` on the concatenated features.

    Returns:
        ``(fitted via the loader, fitted via fit_features)``; with ``compare_state=False`` only their scores on
        the training features are compared (for bases that are unique only up to a rotation).
    """
    from medood.detectors.posthoc import extract_features
    from tests.helpers import toy

    torch.manual_seed(0)
    model = toy.TinyClassifier(2).eval()  # untrained is enough: both paths see the same features
    loader = toy.id_loader(2, n=40, batch_size=12)
    via_loader = make(model).fit(loader)
    feats, labels = extract_features(model, loader)
    via_features = make(model).fit_features(feats, labels)
    if compare_state:
        assert_same_state(via_loader, via_features, atol=1e-4)
    s1, s2 = via_loader.score_features(feats).image_score, via_features.score_features(feats).image_score
    torch.testing.assert_close(s1, s2, rtol=1e-3, atol=1e-3 * float(s1.abs().max()))
    return via_loader, via_features
