from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import color

from medood.data.demo import build_demo
from medood.data.demo.images2d import SETS_2D, get_spec, write_2d_set
from medood.data.demo.ood import FAR_OOD_GROUPS, far_ood_sources
from medood.data.demo.pathology import _SPLIT_BLOCKS, stain_fractions
from medood.data.demo.pathology import CLASSES as PATHOLOGY_CLASSES
from medood.data.demo.pathology import SPEC as PATHOLOGY
from medood.data.demo.procedural import resize_rgb

SETS = tuple(SETS_2D)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo2d")
    build_demo(out, only=list(SETS), seed=5, n_train=2, n_val=1, n_test=1, n_ood=4)
    return out


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.mode == "RGB", f"{path}: mode {img.mode}"
        return np.asarray(img)


@pytest.mark.parametrize("name", SETS)
def test_layout(tiny, name):
    root = tiny / name
    spec = get_spec(name)
    assert len(spec.classes) >= 3
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == sorted(spec.classes), folders
        for cls in folders:
            assert len(list((root / split / cls).glob("*.png"))) == n
    for split in ("ood_near", "ood_far"):
        assert len(list((root / split).rglob("*.png"))) == 4, split
    assert (root / "README.md").read_text().count("real") >= 1


@pytest.mark.parametrize("name", SETS)
def test_datalist_references_existing_rgb_pngs(tiny, name):
    root = tiny / name
    data = json.loads((root / "dataset.json").read_text())
    assert data["classes"] == list(get_spec(name).classes)
    assert data["image_size"] == [64, 64]
    for key in ("training", "validation", "test"):
        for entry in data[key]:
            assert data["classes"][entry["label"]] == entry["class"]
            image = _png(root / entry["image"])
            assert image.shape == (64, 64, 3)
            assert image.dtype == np.uint8
    for key in ("ood_near", "ood_far"):
        kinds = {e["ood_type"] for e in data[key]}
        assert kinds <= set(getattr(get_spec(name), key))
        for entry in data[key]:
            assert _png(root / entry["image"]).shape == (64, 64, 3)


@pytest.mark.parametrize("name", SETS)
def test_determinism(tmp_path, name):
    a = write_2d_set(name, tmp_path / "a", seed=1, n_train=1, n_val=0, n_test=0, n_ood=3)
    b = write_2d_set(name, tmp_path / "b", seed=1, n_train=1, n_val=0, n_test=0, n_ood=3)
    c = write_2d_set(name, tmp_path / "c", seed=2, n_train=1, n_val=0, n_test=0, n_ood=3)
    assert a["training"] == b["training"]
    for ea, eb, ec in zip(a["training"] + a["ood_near"], b["training"] + b["ood_near"], c["training"] + c["ood_near"]):
        img_a = _png(tmp_path / "a" / ea["image"])
        np.testing.assert_array_equal(img_a, _png(tmp_path / "b" / eb["image"]))
        assert not np.array_equal(img_a, _png(tmp_path / "c" / ec["image"]))


def test_image_size(tmp_path):
    data = write_2d_set("dermoscopy", tmp_path, seed=0, n_train=1, n_val=0, n_test=0, n_ood=0, image_size=32)
    assert _png(tmp_path / data["training"][0]["image"]).shape == (32, 32, 3)


def _colour_features(image: np.ndarray) -> np.ndarray:
    pixels = resize_rgb(image, 32).reshape(-1, 3) / 255.0
    hists = [np.histogram(pixels[:, c], bins=8, range=(0, 1))[0] / len(pixels) for c in range(3)]
    return np.concatenate([*hists, pixels.mean(0), pixels.std(0)])


@pytest.mark.parametrize("name", SETS)
def test_classes_are_distinguishable(name):
    """A nearest-centroid classifier on colour histograms beats chance (1/3) clearly on held-out images."""
    feats, labels = [], []
    for index, gen in enumerate(get_spec(name).classes.values()):
        for i in range(20):
            feats.append(_colour_features(gen(np.random.default_rng([9, index, i]), "train")))
            labels.append(index)
    x, y = np.array(feats), np.array(labels)
    train = np.arange(len(y)) % 2 == 0
    centroids = np.stack([x[train & (y == k)].mean(0) for k in range(3)])
    scale = x[train].std(0) + 1e-3
    dist = (((x[~train, None, :] - centroids[None]) / scale) ** 2).sum(-1)
    accuracy = float((dist.argmin(1) == y[~train]).mean())
    assert accuracy >= 0.5, (name, accuracy)


def test_pathology_labels_follow_stain_content():
    for index, (name, gen) in enumerate(PATHOLOGY.classes.items()):
        for i in range(4):
            crop = gen(np.random.default_rng([3, index, i]), "train")
            dab, hem = stain_fractions(color.rgb2hed(np.clip(crop, 0, 1)))
            if name == "dab_rich":
                assert dab > 0.5
            elif name == "haematoxylin_rich":
                assert dab < 0.12
                assert hem > 0.08
            else:
                assert dab < 0.12
                assert hem <= 0.08
    assert PATHOLOGY_CLASSES == tuple(PATHOLOGY.classes)


def test_pathology_splits_use_disjoint_blocks():
    blocks = [set(b) for b in _SPLIT_BLOCKS.values()]
    assert set().union(*blocks) == set(range(16))
    assert sum(len(b) for b in blocks) == 16


def test_far_ood_sources_are_real_offline_images():
    sources = far_ood_sources()
    wanted = {name for names in FAR_OOD_GROUPS.values() for name in names}
    assert wanted <= set(sources), wanted - set(sources)
    for name, image in sources.items():
        assert image.ndim == 3
        assert image.shape[-1] == 3
        assert image.shape[0] >= 64
        assert float(image.std()) > 0.05, name


def test_unknown_set():
    with pytest.raises(ValueError, match="unknown 2-D demo set"):
        get_spec("radiology")


@pytest.mark.slow
def test_cli_full_small_build(tmp_path):
    from medood.cli import main

    assert main(["data", "demo", "--out", str(tmp_path), "--size", "small"]) == 0
    for name in SETS:
        data = json.loads((tmp_path / name / "dataset.json").read_text())
        assert [len(data[k]) for k in ("training", "validation", "test")] == [180, 45, 45]
        assert len(data["ood_near"]) == len(data["ood_far"]) == 40
    brain = json.loads((tmp_path / "brain_mri" / "dataset.json").read_text())
    assert len(brain["training"]) == 40
