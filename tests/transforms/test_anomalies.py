"""Image-space synthetic anomalies: shapes, masks, background, seeding, dictionary versions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage as ndi

from medood.transforms import (
    RandBlobIntensity,
    RandBlobIntensityd,
    RandLocalIntensityScale,
    RandLocalIntensityScaled,
    RandMassEffect,
    RandMassEffectd,
    RandPatchTransplant,
    RandPatchTransplantd,
    RandTexturedNoise,
    RandTexturedNoised,
)

ARRAY = [RandBlobIntensity, RandLocalIntensityScale, RandTexturedNoise, RandPatchTransplant, RandMassEffect]
DICT = [RandBlobIntensityd, RandLocalIntensityScaled, RandTexturedNoised, RandPatchTransplantd, RandMassEffectd]


def _brain(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A textured ellipsoid 'brain' (values ~0.3-1) on a zero background, ``(1, *shape)``."""
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.8
    rng = np.random.default_rng(seed)
    tex = 0.6 + 0.3 * ndi.gaussian_filter(rng.standard_normal(shape), 2) / 0.1
    return torch.as_tensor((np.clip(tex, 0.3, 1.0) * inside)[None], dtype=torch.float32)


@pytest.mark.parametrize("shape", [(48, 56), (32, 36, 28)])
@pytest.mark.parametrize("cls", ARRAY)
def test_output_shapes_mask_and_untouched_background(cls: type, shape: tuple[int, ...]) -> None:
    x = _brain(shape)
    t = cls(radius=(4.0, 6.0))
    t.set_random_state(3)
    out, mask = t(x, donor=_brain(shape, seed=1)) if cls is RandPatchTransplant else t(x)
    assert type(out) is type(x) and out.shape == x.shape and out.dtype == torch.float32
    assert mask.shape == (1, *shape) and mask.dtype == torch.float32
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0} and mask.sum() > 0, "a binary, non-empty mask"
    background = x[0] == 0
    assert float(out[0][background].abs().max()) == 0.0, "the background stays exactly 0"
    assert not bool(mask[0][background].any()), "the anomaly is inside the brain"
    assert bool((out[0][~background] > 0).all()), "the brain stays non-zero (x > 0 remains the brain mask)"
    diff = (out - x).abs()[0]
    assert float(diff[mask[0] > 0].mean()) > 3 * float(diff[mask[0] == 0].mean()), "the change is in the mask"


@pytest.mark.parametrize("cls", ARRAY)
def test_seeded_draws_repeat_and_successive_draws_differ(cls: type) -> None:
    x, donor = _brain((48, 56)), _brain((48, 56), seed=1)
    runs = []
    for _ in range(2):
        t = cls()
        t.set_random_state(7)
        runs.append([t(x, donor=donor) for _ in range(2)])
    for (a, ma), (b, mb) in zip(*runs):
        assert torch.equal(a, b) and torch.equal(ma, mb), "same seed, same anomalies"
    (first, m1), (second, m2) = runs[0]
    assert not torch.equal(m1, m2) or not torch.equal(first, second), "a new anomaly per call"


@pytest.mark.parametrize("cls", ARRAY)
def test_prob_zero_returns_the_input_and_numpy_stays_numpy(cls: type) -> None:
    x = _brain((40, 40)).numpy()
    out, mask = cls(prob=0.0)(x)
    assert isinstance(out, np.ndarray) and np.array_equal(out, x) and mask.sum() == 0
    out, mask = cls(prob=1.0)(MetaTensor(torch.as_tensor(x)))
    assert isinstance(out, MetaTensor) and mask.sum() > 0


def test_transplant_brings_donor_tissue_and_mass_effect_skips_a_thin_brain() -> None:
    x = _brain((48, 56))
    donor = (x > 0).float() * 2.5  # a bright, flat donor brain
    t = RandPatchTransplant(radius=(6.0, 6.0), intensity=(1.0, 1.0))
    t.set_random_state(0)
    out, mask = t(x, donor=donor)
    assert float(out[mask > 0].mean()) > 2.0, "inside the mask the image is (mostly) the donor"
    thin = torch.zeros(1, 40, 40)
    thin[0, 19:21, 5:35] = 0.5
    out, mask = RandMassEffect(strength=(2.0, 2.0))(thin)
    assert torch.equal(out, thin) and mask.sum() == 0, "no room for a deformation: nothing changes"


def test_mass_effect_fits_brains_of_any_thickness() -> None:
    for size in range(6, 30, 3):  # small brains clip the radius to the deepest pixel (float rounding included)
        x = _brain((size, size + 4))
        t = RandMassEffect(radius=(3.0, 8.0), strength=(1.0, 3.0))
        t.set_random_state(size)
        for _ in range(5):
            out, mask = t(x)
            assert float(out[0][x[0] == 0].abs().max()) == 0.0 and not bool(mask[0][x[0] == 0].any())


def test_invalid_ranges_raise() -> None:
    with pytest.raises(ValueError, match="radius"):
        RandBlobIntensity(radius=(5.0, 2.0))
    with pytest.raises(ValueError, match="factor"):
        RandLocalIntensityScale(factor=(0.5, 1.5))
    with pytest.raises(ValueError, match="prob"):
        RandTexturedNoise(prob=1.5)
    with pytest.raises(ValueError, match="donor shape"):
        RandPatchTransplant()(_brain((20, 20)), donor=_brain((20, 24)))


@pytest.mark.parametrize("cls", DICT)
def test_dictionary_versions_corrupt_every_key_identically(cls: type) -> None:
    x = _brain((48, 56))
    t = cls(keys=["a", "b"], mask_key="m")
    t.set_random_state(1)
    d = t({"a": x, "b": x.clone(), "donor": _brain((48, 56), seed=2), "other": 5})
    assert torch.equal(d["a"], d["b"]) and d["m"].shape == (1, 48, 56) and d["m"].sum() > 0
    assert d["other"] == 5 and not torch.equal(d["a"], x)
    again = cls(keys=["a", "b"], mask_key="m").set_random_state(1)({"a": x, "b": x, "donor": d["donor"]})
    assert torch.equal(again["a"], d["a"]), "seeded through set_random_state"


@pytest.mark.parametrize("cls", [c for c in ARRAY if c is not RandMassEffect])
def test_every_drawn_anomaly_has_a_mask_even_at_the_brain_edge(cls: type) -> None:
    """The first metaball bump sits on the drawn centre (a brain pixel), so ``w >= 0.5`` is never empty.

    Before, all bumps were jittered: seeds 131 and 496 (blob, scale, texture) and 219 and 570 (transplant) drew
    an anomaly whose mask was empty.
    """
    x = _brain((40, 40))
    t = cls(prob=1.0)
    for seed in range(600):
        t.set_random_state(seed)
        _, mask = t(x)
        assert mask.sum() > 0, f"seed {seed}: an anomaly was drawn but its mask is empty"
