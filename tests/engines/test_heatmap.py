"""Heatmap training data: targets are the nearest same-predicted-class ID images (checked by brute force)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.transforms import Compose

from medood.data.auxiliary import auxiliary_datalist, corruption_datalist
from medood.data.classification import classifier_preprocessing
from medood.data.folders import class_folder_datalist
from medood.detectors.heatmap import HeatmapDetector
from medood.engines.fit import train_heatmap_decoder
from medood.engines.heatmap import heatmap_training_datalist, ood_pairs, predicted_features
from medood.networks.classifiers import build_classifier
from medood.transforms.corruptions import Corruptd
from tests.helpers import toy
from tests.helpers.class_folders import make_class_folders


def brute_force_target(det: HeatmapDetector, id_x: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The ID image with the same predicted class and the smallest Euclidean feature distance (one at a time)."""
    with torch.no_grad():
        f_id = det.extract_features(id_x)
        f = det.extract_features(x[None])
    pred_id, pred = f_id["logits"].argmax(1), f["logits"].argmax(1)
    d = (f_id["features"] - f["features"]).pow(2).sum(1)
    d[pred_id != pred] = float("inf")
    return id_x[int(d.argmin())]


def test_ood_pairs_targets_by_brute_force() -> None:
    det = HeatmapDetector(model=toy.trained_classifier(2), **HeatmapDetector.tiny_config(2))
    loader = toy.id_loader(2, n=18, batch_size=6)
    det.fit_statistics(loader)
    id_x = torch.cat([b["image"] for b in loader])
    extra = toy.ood_images(2, 5, seed=1)
    batches = ood_pairs(det, loader, batch_size=7, aux_images=extra)
    images = torch.cat([b["image"] for b in batches])
    targets = torch.cat([b["target"] for b in batches])
    feats, preds = torch.cat([b["features"] for b in batches]), torch.cat([b["pred"] for b in batches])
    z, y = det.encode(images)  # the stored classifier outputs are those of each row's own image
    torch.testing.assert_close(feats, z)
    torch.testing.assert_close(preds, y)
    assert images.shape[0] == 18 + 2 * 18 + 5  # ID + 2 corruptions per image + the extra images
    assert [b["image"].shape[0] for b in batches] == [7] * 8 + [3]
    is_id = (images[:, None] == id_x[None]).flatten(2).all(2).any(1)
    assert int(is_id.sum()) == 18
    torch.testing.assert_close(targets[is_id], images[is_id])  # ID images are their own target
    for x, t in zip(images[~is_id], targets[~is_id]):
        torch.testing.assert_close(t, brute_force_target(det, id_x, x))


def test_predicted_features_splits_large_batches() -> None:
    det = HeatmapDetector(model=toy.trained_classifier(2), **HeatmapDetector.tiny_config(2))
    x = toy.blob_images(2, 10, seed=2)[0]
    f, p = predicted_features(det, [{"image": x}], chunk_size=3)
    ref = det.extract_features(x)
    torch.testing.assert_close(f, ref["features"])
    torch.testing.assert_close(p, ref["logits"].argmax(1))


def test_training_datalist_from_files(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data")
    other = make_class_folders(tmp_path / "other_organ")
    torch.manual_seed(0)
    net = build_classifier("resnet10", 3).eval()
    det = HeatmapDetector(model=net, image_size=20, in_channels=3, decoder={"base_channels": 4})
    id_items, _ = class_folder_datalist(root, "train")
    aux = corruption_datalist(id_items, ["noise", "blur"], per_image=1, seed=3)
    aux += auxiliary_datalist([other / "train"], forbidden=[root / "ood_near", root / "ood_far", root / "test"])
    base = classifier_preprocessing(20)
    transform = Compose([*base.transforms[:-1], Corruptd("image"), base.transforms[-1]])
    items = heatmap_training_datalist(det, id_items, aux, transform, batch_size=5)

    assert len(items) == len(id_items) + len(aux)  # every predicted class has ID images here
    assert all(it["target"] == it["image"] for it in items[: len(id_items)])
    for it in items[:: len(items) // 6]:  # stored classifier outputs = those of the item's own (corrupted) image
        z, y = det.encode(transform(it)["image"][None])
        torch.testing.assert_close(it["features"], z[0])
        assert int(it["pred"]) == int(y)
    id_paths = {it["image"] for it in id_items}
    assert all(it["target"] in id_paths for it in items)
    id_x = torch.stack([transform(it)["image"] for it in id_items])
    for it in items[len(id_items) :: 5]:  # a sample of the auxiliary items, by brute force
        x = transform(it)["image"]
        expected = brute_force_target(det, id_x, x)
        torch.testing.assert_close(transform({"image": it["target"]})["image"], expected)
    f, _ = predicted_features(det, [id_x])
    assert float(det.feature_max) == pytest.approx(float(f.max()))  # the feature range is fitted on the way


def test_train_heatmap_decoder_with_an_auxiliary_loader() -> None:
    torch.manual_seed(0)
    det = HeatmapDetector(
        model=toy.trained_classifier(2), **{**HeatmapDetector.tiny_config(2), "epochs": 2, "aux_corruptions": ()}
    )
    aux = [toy.ood_images(2, 6, seed=4)]
    train_heatmap_decoder(det, toy.id_loader(2, n=12, batch_size=6), aux, progress=False)
    assert det.is_fitted
    with torch.no_grad():
        out = det.score(aux[0])
    assert out.anomaly_map.shape == (6, 1, 16, 16)
