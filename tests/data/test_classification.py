"""medood.data.classification: classifier preprocessing, class-folder loaders and class-balanced sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from PIL import Image

from medood.data.classification import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    class_balanced_loader,
    class_balanced_sampler,
    class_folder_loader,
    classifier_preprocessing,
)
from tests.helpers.class_folders import CLASSES, make_class_folders


def test_preprocessing_makes_rgb_of_any_input(tmp_path: Path) -> None:
    Image.fromarray(np.full((10, 14), 255, np.uint8)).save(tmp_path / "g.png")
    out = classifier_preprocessing(8)({"image": str(tmp_path / "g.png")})["image"]
    assert tuple(out.shape) == (3, 8, 8)
    assert type(out) is torch.Tensor, "no MetaTensor: metadata tracking is off"
    assert torch.allclose(out, torch.ones_like(out))
    norm = classifier_preprocessing(8, normalize=True)({"image": str(tmp_path / "g.png")})["image"]
    assert norm[0, 0, 0].item() == pytest.approx((1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], rel=1e-4)
    with pytest.raises(ValueError, match="image_size"):
        classifier_preprocessing(4)


def test_class_folder_loader_batches(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", n_train=2, n_eval=1)
    loader, names = class_folder_loader(root, "val", image_size=8, batch_size=2)
    assert names == CLASSES
    batches = list(loader)
    assert [b["case"] for b in batches] == [["normal_mucosa/img_00", "polyp/img_00"], ["ulcer_inflammation/img_00"]]
    assert batches[0]["image"].shape == (2, 3, 8, 8)
    assert batches[0]["label"].tolist() == [0, 1]


def test_class_balanced_sampler_draws_classes_equally() -> None:
    labels = [0] * 90 + [1] * 10
    sampler = class_balanced_sampler(labels, num_samples=4000, generator=torch.Generator().manual_seed(0))
    drawn = torch.tensor(labels)[torch.tensor(list(sampler))]
    assert len(drawn) == 4000
    assert abs(float((drawn == 1).float().mean()) - 0.5) < 0.05, "the rare class is drawn about half the time"
    assert sampler.replacement
    with pytest.raises(ValueError, match=">= 0"):
        class_balanced_sampler([0, -1])
    with pytest.raises(ValueError, match="at least one"):
        class_balanced_sampler([])


def test_class_balanced_loader_keeps_the_loader_settings() -> None:
    items = [{"image": torch.full((1, 2, 2), float(i)), "label": int(i >= 8)} for i in range(10)]
    loader = DataLoader(Dataset(items), batch_size=5, shuffle=True)
    balanced = class_balanced_loader(loader)
    assert balanced.dataset is loader.dataset
    assert balanced.batch_size == 5
    assert isinstance(balanced.sampler, torch.utils.data.WeightedRandomSampler)
    torch.manual_seed(0)
    seen = torch.cat([b["label"] for _ in range(20) for b in balanced])
    assert 0.4 < float(seen.float().mean()) < 0.6, "2 of 10 items are class 1, drawn about half the time"
    with pytest.raises(ValueError, match="labels"):
        class_balanced_loader(DataLoader([torch.zeros(2)] * 4, batch_size=2))
