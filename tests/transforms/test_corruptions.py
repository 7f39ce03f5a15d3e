"""Corruptions for auxiliary OOD data: deterministic per seed, strong, shape-keeping, input untouched (2D and 3D)."""

from __future__ import annotations

import pytest
import torch

from medood.transforms.corruptions import CORRUPTIONS, Corrupt, Corruptd, corruption_plan

CASES = [(n, sd) for n in sorted(CORRUPTIONS) for sd in (2, 3) if not (n == "stain" and sd == 3)]


def image(sd: int) -> torch.Tensor:
    """A smooth blob plus a sharp-edged bright box plus mild texture (RGB in 2D, one channel in 3D)."""
    g = torch.Generator().manual_seed(3)
    channels = 3 if sd == 2 else 1
    size = (24, 20) if sd == 2 else (12, 14, 10)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, s) for s in size], indexing="ij")).pow(2).sum(0)
    x = (0.2 + 0.4 * torch.exp(-2 * grid)).expand(channels, *size).clone()
    x[(slice(None), *[slice(s // 4, s // 2) for s in size])] = 0.9
    return x + 0.05 * torch.rand(channels, *size, generator=g)


@pytest.mark.parametrize(("name", "sd"), CASES)
def test_deterministic_strong_and_shape_keeping(name: str, sd: int) -> None:
    x = image(sd)
    before = x.clone()
    c = Corrupt()
    a, b, other = c(x, name, 11), c(x, name, 11), c(x, name, 12)
    torch.testing.assert_close(x, before)  # the input is never modified in place
    assert a.shape == x.shape and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, other), f"{name}: another seed gives the same image"
    assert (a - x).abs().mean() > 0.005, f"{name}: corruption too weak ({(a - x).abs().mean():.4f})"


def test_mask_background_keeps_zeros() -> None:
    x = image(3)
    x[:, :3] = 0.0
    out = Corrupt(mask_background=True)(x, "noise", 1)
    assert (out[:, :3] == 0).all() and (out[:, 3:] != x[:, 3:]).any()


def test_options_override_the_defaults() -> None:
    x = image(2)
    mild = Corrupt({"noise": {"std": 0.01}})(x, "noise", 1)
    strong = Corrupt()(x, "noise", 1)
    assert (mild - x).abs().mean() < 0.1 * (strong - x).abs().mean()


def test_stain_needs_rgb_and_unknown_names_fail() -> None:
    with pytest.raises(ValueError, match="RGB"):
        Corrupt()(image(3), "stain", 0)
    with pytest.raises(ValueError, match="unknown corruption"):
        Corrupt()(image(2), "jpeg", 0)
    with pytest.raises(ValueError, match="unknown corruptions"):
        Corrupt({"jpeg": {}})


def test_dictionary_version_reads_name_and_seed_from_the_item() -> None:
    x = image(2)
    t = Corruptd("image")
    out = t({"image": x, "corruption": "blur", "corruption_seed": 4, "target": x})
    torch.testing.assert_close(out["image"], Corrupt()(x, "blur", 4))
    assert out["target"] is x  # only the keyed images
    assert t({"image": x})["image"] is x  # ID items pass unchanged


def test_plan_is_reproducible_and_covers_every_image() -> None:
    plan = corruption_plan(5, ["noise", "blur"], per_image=3, seed=2)
    assert plan == corruption_plan(5, ["noise", "blur"], per_image=3, seed=2)
    assert [i for i, _, _ in plan] == [i for i in range(5) for _ in range(3)]
    assert {n for _, n, _ in plan} == {"noise", "blur"}
    assert len({s for _, _, s in plan}) == 15
    with pytest.raises(ValueError, match="per_image"):
        corruption_plan(5, ["nope"])
