"""Stain labels by colour deconvolution, stain density and 2D images as one-slice volumes (array and dict)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from skimage.color import hed2rgb

from medood.transforms.stain import (
    DAB_THRESHOLD,
    HAEMATOXYLIN_THRESHOLD,
    ImageAsSlab,
    ImageAsSlabd,
    StainDensity,
    StainDensityd,
    StainLabels,
    StainLabelsd,
)


def _stained_patch() -> np.ndarray:
    """(3, 4, 6) RGB: columns 0-1 unstained, 2-3 haematoxylin only, 4-5 DAB (plus some haematoxylin)."""
    hed = np.zeros((4, 6, 3))
    hed[:, 2:4, 0] = 4 * HAEMATOXYLIN_THRESHOLD
    hed[:, 4:, 0] = 2 * HAEMATOXYLIN_THRESHOLD
    hed[:, 4:, 2] = 4 * DAB_THRESHOLD
    return np.moveaxis(hed2rgb(hed), -1, 0).astype(np.float32)


def test_stain_labels_by_colour_deconvolution() -> None:
    labels = StainLabels(haematoxylin_label=4, dab_label=5)(_stained_patch())
    assert labels.shape == (1, 4, 6) and labels.dtype == torch.uint8
    expected = np.array([0, 0, 4, 4, 5, 5], dtype=np.uint8)
    np.testing.assert_array_equal(labels[0].numpy(), np.tile(expected, (4, 1)))
    d = StainLabelsd("image", label_key="seg")({"image": _stained_patch()})
    assert torch.equal(d["seg"], StainLabels()(_stained_patch()))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        StainLabels()(np.ones((1, 4, 4)))


def test_stain_density_and_slab_keep_metadata() -> None:
    rgb = MetaTensor(torch.tensor(_stained_patch()), meta={"filename_or_obj": "p.png"})
    dens = StainDensity()(rgb)
    assert dens.shape == (1, 4, 6) and isinstance(dens, MetaTensor) and dens.meta["filename_or_obj"] == "p.png"
    torch.testing.assert_close(dens[0], 1 - torch.tensor(_stained_patch()).mean(0))
    assert float(dens[0, 0, 0]) == pytest.approx(0.0, abs=1e-6), "unstained glass is 0"
    rgba = torch.cat([torch.tensor(_stained_patch()), torch.zeros(1, 4, 6)])
    torch.testing.assert_close(StainDensity()(rgba), StainDensity()(rgb).as_tensor())  # alpha ignored
    slab = ImageAsSlab()(dens)
    assert slab.shape == (1, 4, 6, 1) and isinstance(slab, MetaTensor)
    d = ImageAsSlabd(["a", "b"])(StainDensityd("a")({"a": rgb, "b": torch.zeros(1, 4, 6)}))
    assert d["a"].shape == d["b"].shape == (1, 4, 6, 1)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        ImageAsSlab()(torch.zeros(1, 2, 3, 4))
