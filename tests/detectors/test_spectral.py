"""Spectral signatures: the maths against an SVD reference, rank deficiency, streaming and capped fits, distances,
multi-layer combination, 2D/3D host networks."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.nets import UNet

from medood.detectors import get_detector
from medood.detectors.spectral import SpectralDetector, spectral_signature
from medood.metrics import auroc
from tests.detectors.posthoc_utils import assert_same_state, fit_in_batches, roundtrip


def _svd_signature(f: torch.Tensor) -> torch.Tensor:
    """Reference: singular values of the C x N matrix by SVD (float64), log, L2-normalised."""
    s = torch.linalg.svdvals(f.reshape(f.shape[0], -1).double())
    log_s = torch.log(s)
    return log_s / log_s.norm()


def _maps(n: int, c: int = 6, size: int = 8, sd: int = 2, seed: int = 0, decay: float = 0.1) -> torch.Tensor:
    """Feature maps mixing white noise through one fixed basis with a decaying spectrum (``decay=1``: flat)."""
    basis = torch.randn(c, c, generator=torch.Generator().manual_seed(c)) * torch.linspace(1.0, decay, c)
    z = torch.randn(n, c, size**sd, generator=torch.Generator().manual_seed(seed))
    return (basis @ z).reshape(n, c, *[size] * sd)


@pytest.mark.parametrize("sd", [1, 2, 3])
def test_signature_matches_an_svd_reference(sd: int) -> None:
    f = _maps(3, c=5, size=6, sd=sd)
    sig = spectral_signature(f)
    assert sig.shape == (3, 5) and sig.dtype == torch.float64
    for i in range(3):
        torch.testing.assert_close(sig[i], _svd_signature(f[i]), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(sig.norm(dim=1), torch.ones(3, dtype=torch.float64))
    assert bool((sig[:, :-1] >= sig[:, 1:]).all()), "descending singular values give a descending signature"


def test_rank_deficient_maps_are_floored_not_logged_as_zeros() -> None:
    """N < C: C - N singular values are 0; they take log(eps * sigma_1), no -inf, no diag-log artefact."""
    f = torch.randn(1, 8, 3, generator=torch.Generator().manual_seed(1))  # C = 8 channels, N = 3 voxels
    eps = 1e-6
    sig = spectral_signature(f, eps=eps)
    s = torch.linalg.svdvals(f[0].double())  # the 3 non-zero singular values
    expected = torch.cat([torch.log(s), torch.full((5,), math.log(eps) + math.log(float(s[0])), dtype=torch.float64)])
    expected = expected / expected.norm()
    assert torch.isfinite(sig).all()
    torch.testing.assert_close(sig[0], expected, atol=1e-6, rtol=1e-6)
    # the MedicOOD bug (log of diag(sigma), a C x C matrix) would give a C*C-long signature dominated by
    # log(1e-10) entries; ours has one entry per channel
    assert sig.shape == (1, 8)


def test_all_zero_map_gives_the_zero_signature_and_dead_channels_stay_finite() -> None:
    f = torch.zeros(2, 4, 5, 5)
    f[1, :2] = torch.randn(2, 5, 5)  # two dead channels
    sig = spectral_signature(f)
    assert torch.equal(sig[0], torch.zeros(4, dtype=torch.float64))
    assert torch.isfinite(sig[1]).all()
    torch.testing.assert_close(sig[1].norm(), torch.tensor(1.0, dtype=torch.float64))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="distance"):
        SpectralDetector(layers=["a"], distance="median")
    with pytest.raises(ValueError, match="eps"):
        SpectralDetector(layers=["a"], eps=0.0)
    with pytest.raises(ValueError, match="layer names"):
        SpectralDetector()
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\)"):
        spectral_signature(torch.ones(3, 4))
    det = SpectralDetector(layers=["a"]).fit_features({"a": _maps(10)})
    with pytest.raises(ValueError, match="channels"):
        det.score_features({"a": _maps(2, c=3)})
    with pytest.raises(KeyError, match="'a'"):
        det.score_features({"b": _maps(2)})


@pytest.mark.parametrize("distance", ["min", "kth", "mean_signature"])
def test_distances_match_brute_force(distance: str) -> None:
    train, test = _maps(20, seed=0), torch.cat([_maps(3, seed=5), _maps(3, seed=6, decay=0.01)])
    det = SpectralDetector(layers=["a"], distance=distance, k=3).fit_features({"a": train})
    bank, sig = spectral_signature(train), spectral_signature(test)
    d = torch.cdist(sig, bank)
    expected = {
        "min": d.min(1).values,
        "kth": d.sort(1).values[:, 2],
        "mean_signature": (sig - bank.mean(0)).norm(dim=1),
    }[distance]
    scores = det.score_features({"a": test}).image_score
    torch.testing.assert_close(scores, expected.float())
    assert scores[3:].min() > scores[:3].max(), "a steeper spectrum is farther from the training signatures"


def test_normalized_combination_uses_leave_one_out_training_distances() -> None:
    feats = {"a": _maps(12, c=4, seed=0), "b": 50 * _maps(12, c=6, size=4, seed=1)}
    det = SpectralDetector(layers=["a", "b"], combine="normalized").fit_features(feats)
    for i, name in enumerate(["a", "b"]):
        bank = spectral_signature(feats[name])
        d = torch.cdist(bank, bank) + torch.diag(torch.full((12,), float("inf"), dtype=torch.float64))
        loo = d.min(1).values
        torch.testing.assert_close(det.layer_mean[i], loo.mean())
        torch.testing.assert_close(det.layer_std[i], loo.std())
    test = {"a": _maps(2, c=4, seed=9), "b": 50 * _maps(2, c=6, size=4, seed=9)}
    out = det.score_features(test)
    per_layer = out.extras["layer_scores"].double()  # type: ignore[index]
    expected = ((per_layer - det.layer_mean) / det.layer_std).mean(1)
    torch.testing.assert_close(out.image_score, expected.float())
    mean_det = SpectralDetector(layers=["a", "b"]).fit_features(feats)
    torch.testing.assert_close(mean_det.score_features(test).image_score, per_layer.mean(1).float())


def test_streaming_fit_equals_one_shot_and_cap_is_seeded() -> None:
    feats = {"a": _maps(30, seed=3), "b": _maps(30, c=3, size=5, seed=4)}
    one = SpectralDetector(layers=["a", "b"]).fit_features(feats)
    streamed = fit_in_batches(SpectralDetector(layers=["a", "b"]), feats, None, 7)
    assert_same_state(one, streamed, atol=0)
    capped = fit_in_batches(SpectralDetector(layers=["a", "b"], max_signatures=8, seed=2), feats, None, 4)
    again = fit_in_batches(SpectralDetector(layers=["a", "b"], max_signatures=8, seed=2), feats, None, 11)
    assert capped.signatures_0.shape == (8, 6)
    assert_same_state(capped, again, atol=0)  # the sample does not depend on the batching
    full_a, full_b = one.signatures_0, one.signatures_1
    rows = [int((full_a - s).norm(dim=1).argmin()) for s in capped.signatures_0]
    assert torch.equal(full_b[rows], capped.signatures_1), "the same training images are kept for every layer"
    other = SpectralDetector(layers=["a", "b"], max_signatures=8, seed=3).fit_features(feats)
    assert not torch.equal(other.signatures_0, capped.signatures_0)


def test_state_round_trip() -> None:
    feats = {"a": _maps(9)}
    det = SpectralDetector(layers=["a"], distance="kth", k=2).fit_features(feats)
    fresh = roundtrip(det, lambda: SpectralDetector(layers=["a"], distance="kth", k=2))
    assert fresh.is_fitted
    test = {"a": _maps(4, seed=8)}
    assert torch.equal(fresh.score_features(test).image_score, det.score_features(test).image_score)


@pytest.mark.parametrize("sd", [2, 3])
def test_monai_unet_host_default_layers_and_direction(sd: int) -> None:
    torch.manual_seed(0)
    net = UNet(sd, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    det = get_detector("spectral", model=net)
    assert det.layers == ["model.0", "model.1.submodule.1.submodule"]  # down layer, then the bottom block
    size = 16
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, size)] * sd, indexing="ij")).pow(2).sum(0)

    def brains(n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        radius = 0.6 + 0.1 * torch.rand(n, generator=g)
        x = (grid[None] < radius.view(-1, *[1] * sd) ** 2).float() * (0.5 + 0.5 * grid[None])
        return (x + 0.02 * torch.randn(x.shape, generator=g))[:, None]

    det.fit([{"image": brains(8, 0)}, {"image": brains(8, 1)}])
    id_scores = det.score(brains(6, 2)).image_score
    ood = brains(6, 3)
    ood = torch.where(ood > 0.1, 1.5 - ood, ood)  # inverted contrast inside the "brain"
    ood_scores = det.score(ood).image_score
    assert auroc(torch.cat([id_scores, ood_scores]).numpy(), [0] * 6 + [1] * 6) == 1.0


def test_signature_of_wide_maps_uses_the_small_gram() -> None:
    """N < C (a classifier's deep layer, e.g. 2048 channels x 2 x 2): the N x N Gram gives the SVD's signature."""
    f = torch.randn(3, 256, 2, 3, dtype=torch.float64)
    sigma = torch.linalg.svdvals(f.reshape(3, 256, 6))
    full = torch.cat([sigma, sigma.new_zeros(3, 250)], dim=1)
    ref = torch.log(torch.maximum(full, 1e-6 * sigma[:, :1]))
    torch.testing.assert_close(spectral_signature(f), ref / ref.norm(dim=1, keepdim=True))


def test_n_singular_and_normalization_options() -> None:
    """``n_singular`` keeps the largest singular values; ``ratio`` / ``none`` are the logged spectrum unnormalised."""
    f = _maps(3, c=6, decay=0.05)
    s = torch.linalg.svdvals(f.reshape(3, 6, -1).double())
    assert torch.allclose(spectral_signature(f, normalization="none"), torch.log(s), atol=1e-8)
    assert torch.allclose(spectral_signature(f, normalization="ratio"), torch.log(s / s[:, :1]), atol=1e-8)
    top = spectral_signature(f, n_singular=2)
    ref = torch.log(s[:, :2])
    assert top.shape == (3, 2) and torch.allclose(top, ref / ref.norm(dim=1, keepdim=True), atol=1e-8)
    det = SpectralDetector(layers=["a"], n_singular=2, normalization="ratio").fit_features({"a": _maps(10)})
    assert det.signatures_0.shape == (10, 2) and torch.allclose(det.signatures_0[:, 0], torch.zeros(10).double())
    with pytest.raises(ValueError, match="normalization"):
        SpectralDetector(layers=["a"], normalization="max")
    with pytest.raises(ValueError, match="n_singular"):
        SpectralDetector(layers=["a"], n_singular=0)


def test_domain_bank_scores_each_domain_against_its_own_signatures() -> None:
    """A bank over two domains (labels at fit): an image of either domain is nearest to its own domain's signatures,
    and is scored as close as by a bank of its own domain only (the other domain's signatures are farther)."""
    flat, steep = _maps(12, decay=1.0, seed=1), _maps(12, decay=0.01, seed=2)
    labels = torch.tensor([0] * 12 + [1] * 12)
    joint = SpectralDetector(layers=["a"]).fit_features({"a": torch.cat([flat, steep])}, labels)
    assert torch.equal(joint.signature_domains, labels)
    test_flat, test_steep = _maps(4, decay=1.0, seed=5), _maps(4, decay=0.01, seed=6)
    assert joint.nearest_domain({"a": test_flat}).tolist() == [0] * 4
    assert joint.nearest_domain({"a": test_steep}).tolist() == [1] * 4
    only_steep = SpectralDetector(layers=["a"]).fit_features({"a": steep})
    assert torch.allclose(joint.score_features({"a": test_steep}).image_score,
                          only_steep.score_features({"a": test_steep}).image_score)  # fmt: skip
    fresh = roundtrip(joint, lambda: SpectralDetector(layers=["a"]))
    assert torch.equal(fresh.signature_domains, labels)
    unlabelled = SpectralDetector(layers=["a"]).fit_features({"a": flat})
    with pytest.raises(ValueError, match="domain labels"):
        unlabelled.nearest_domain({"a": test_flat})
    legacy = {k: v for k, v in unlabelled.state_dict().items() if k != "signature_domains"}
    SpectralDetector(layers=["a"]).load_state_dict(legacy)  # saved before the domain labels: still loads
