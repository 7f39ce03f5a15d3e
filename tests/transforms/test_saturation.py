"""RandSaturation / RandSaturationd against the blend-with-luma definition (torchvision's ColorJitter saturation)."""

from __future__ import annotations

import pytest
import torch

from medood.transforms import RandSaturation, RandSaturationd


def _luma(img: torch.Tensor) -> torch.Tensor:
    return 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def test_factor_blends_with_luma() -> None:
    img = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(0))
    t = RandSaturation(factors=0.5, clip=False).set_random_state(3)
    out = t(img)
    assert 0.5 <= t.factor <= 1.5
    expected = _luma(img)[None] + t.factor * (img - _luma(img)[None])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(_luma(out), _luma(img), msg="saturation keeps the luma")


def test_extremes_and_grey_images() -> None:
    img = torch.rand(3, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    t = RandSaturation(factors=1.0)
    t.randomize()
    t.factor = 0.0
    grey = t(img, randomize=False)
    torch.testing.assert_close(grey, _luma(img)[None].expand(3, -1, -1, -1))
    flat = torch.full((3, 4, 4), 0.4)
    torch.testing.assert_close(RandSaturation(1.0)(flat), flat)
    torch.testing.assert_close(RandSaturation(0.0)(img), img)


def test_dict_version_uses_one_factor_and_is_seedable() -> None:
    img = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(2))
    t = RandSaturationd(["a", "b"], factors=0.5).set_random_state(7)
    out = t({"a": img, "b": img.clone()})
    torch.testing.assert_close(out["a"], out["b"])
    assert not torch.allclose(out["a"], img)
    again = RandSaturationd(["a", "b"], factors=0.5).set_random_state(7)({"a": img, "b": img})
    torch.testing.assert_close(again["a"], out["a"])
    skipped = RandSaturationd("a", prob=0.0)({"a": img})
    assert skipped["a"] is img


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="RGB"):
        RandSaturation()(torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match="factors"):
        RandSaturation(factors=1.5)
