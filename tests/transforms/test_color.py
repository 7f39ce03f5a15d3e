"""ToRGB / ToRGBd: grey and RGBA images to three channels, 2D and 3D."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from medood.transforms import ToRGB, ToRGBd

CASES = [
    ((1, 4, 5), (3, 4, 5)),
    ((3, 4, 5), (3, 4, 5)),
    ((4, 4, 5), (3, 4, 5)),
    ((1, 2, 3, 4), (3, 2, 3, 4)),
]


@pytest.mark.parametrize(("shape", "expected"), CASES)
def test_shapes_and_values(shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    img = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    out = ToRGB()(img)
    assert tuple(out.shape) == expected
    if shape[0] == 1:
        assert all(torch.equal(out[c], img[0]) for c in range(3)), "grey is copied to every channel"
    else:
        assert torch.equal(out, img[:3])
    d = ToRGBd(keys="image")({"image": img, "label": 1})
    assert torch.equal(d["image"], out)
    assert d["label"] == 1


def test_metatensor_is_kept_and_bad_channels_raise() -> None:
    out = ToRGB()(MetaTensor(torch.zeros(1, 2, 2)))
    assert isinstance(out, MetaTensor)
    with pytest.raises(ValueError, match="2 channels"):
        ToRGB()(torch.zeros(2, 2, 2))
