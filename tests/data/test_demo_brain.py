from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from medood.data.demo import build_demo
from medood.data.demo.brain import load_template, synthesize_subject, template_files
from medood.data.demo.brain_set import lesion_types_for_test, subject_seed
from medood.data.demo.lesions import LESION_KINDS
from medood.data.demo.ood import BRAIN_OOD_KINDS, make_brain_ood

CONTRASTS = ("T1w", "T2w", "FLAIR")


@pytest.fixture(scope="module")
def template():
    return load_template("small")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory, template):
    out = tmp_path_factory.mktemp("demo")
    build_demo(out, size="small", seed=3, only=["brain_mri"], n_train=1, n_val=1, n_test=3, n_ood=1)
    root = out / "brain_mri"
    return root, json.loads((root / "dataset.json").read_text())


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def test_template_found_offline_without_nilearn_import():
    paths = template_files()
    assert set(paths) == {"t1", "gm", "wm"}
    assert all(p.is_file() and p.name.endswith(".nii.gz") for p in paths.values())
    code = (
        "import sys; from medood.data.demo.brain import load_template; t = load_template('small'); "
        "assert 'nilearn' not in sys.modules, 'nilearn imported'; assert t.shape == (99, 117, 95), t.shape"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_template_grid(template):
    assert template.shape == (99, 117, 95)
    np.testing.assert_allclose(np.diag(template.affine)[:3], [2.0, 2.0, 2.0])
    np.testing.assert_allclose(template.affine[:3, 3], [-98.0, -134.0, -72.0])
    assert 150_000 < int((template.mask >= 0.5).sum()) < 300_000
    assert template.ventricles.sum() > 200, "ventricle region not found"


def test_layout_and_datalist(tiny_set):
    root, data = tiny_set
    assert (root / "README.md").is_file()
    assert data["modality"] == {"0": "T1w", "1": "T2w", "2": "FLAIR"}
    counts = {k: len(data[k]) for k in ("training", "validation", "test", "ood")}
    assert counts == {"training": 1, "validation": 1, "test": 3, "ood": 1}
    for key in ("training", "validation", "test", "ood"):
        for entry in data[key]:
            assert entry["image"] == entry["T1w"]
            for field in (*CONTRASTS, "brainmask", "label"):
                if field in entry:
                    assert (root / entry[field]).is_file(), entry[field]
    assert data["training"][0]["T1w"].startswith("train/sub-")
    assert data["ood"][0]["ood_type"] == BRAIN_OOD_KINDS[0]
    cases = [e["case"] for k in ("training", "validation", "test") for e in data[k]]
    assert len(cases) == len(set(cases)), "subject ids must be unique across splits"


def test_test_volumes_masks_and_affines(tiny_set):
    root, data = tiny_set
    kinds = [e["lesion_type"] for e in data["test"]]
    assert kinds == lesion_types_for_test(3) == ["tumour", "ms", "none"]
    for entry in data["test"]:
        lesion, lesion_affine = _load(root / entry["label"])
        brain, _ = _load(root / entry["brainmask"])
        assert lesion.dtype == np.uint8
        assert brain.dtype == np.uint8
        assert entry["is_anomalous"] == int(lesion.any()) == int(entry["lesion_type"] != "none")
        assert int(lesion.sum()) == entry["lesion_voxels"]
        assert not np.any(lesion.astype(bool) & ~brain.astype(bool)), "lesion outside the brain mask"
        for contrast in CONTRASTS:
            img = nib.load(str(root / entry[contrast]))
            assert img.get_data_dtype() == np.int16
            assert img.shape == lesion.shape
            np.testing.assert_array_equal(img.affine, lesion_affine)
            data_f = img.get_fdata(dtype=np.float32)
            assert np.all(data_f[brain == 0] == 0), "not skull-stripped"
            assert float(data_f[brain > 0].mean()) > 0.01


def test_build_matches_api(tiny_set, template):
    root, data = tiny_set
    entry = data["test"][0]
    subject = synthesize_subject(template, subject_seed(3, "test", 0), entry["lesion_type"])
    lesion, _ = _load(root / entry["label"])
    np.testing.assert_array_equal(lesion, subject.lesion)
    t1 = nib.load(str(root / entry["T1w"])).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(t1, subject.images["T1w"], atol=2.6e-4)  # int16, slope 5e-4


@pytest.mark.parametrize("kind", LESION_KINDS)
def test_lesion_kind_against_healthy_twin(template, kind):
    seed = (11, 3, LESION_KINDS.index(kind))
    sick = synthesize_subject(template, seed, kind)
    twin = synthesize_subject(template, seed)
    lesion = sick.lesion.astype(bool)
    assert lesion.sum() >= 1, f"{kind}: empty lesion mask"
    assert not twin.lesion.any()
    assert not np.any(lesion & ~sick.brainmask.astype(bool))
    np.testing.assert_array_equal(sick.brainmask, twin.brainmask)
    far = ~ndi.binary_dilation(lesion, iterations=3)
    changed = np.zeros(lesion.shape, dtype=bool)
    for contrast in CONTRASTS:
        np.testing.assert_array_equal(sick.images[contrast][far], twin.images[contrast][far])
        changed |= sick.images[contrast] != twin.images[contrast]
    assert changed[lesion].all(), f"{kind}: lesion voxels identical to the healthy twin"
    diff = {c: float(sick.images[c][lesion].mean() - twin.images[c][lesion].mean()) for c in CONTRASTS}
    if kind.startswith("hyper"):
        assert all(d > 0 for d in diff.values()), diff
    elif kind.startswith("hypo"):
        assert all(d < 0 for d in diff.values()), diff
    elif kind == "ms":
        assert diff["T2w"] > 0, diff
        assert diff["FLAIR"] > 0, diff
    else:  # tumour: oedema bright on T2w, core dark on T1w
        assert diff["T2w"] > 0, diff


def test_lesion_sizes(template):
    large = synthesize_subject(template, (5, 3, 0), "hyper_large").lesion.sum() * 8.0  # mm^3 at 2 mm
    small = synthesize_subject(template, (5, 3, 0), "hypo_small").lesion.sum() * 8.0
    assert large > 4 / 3 * np.pi * 12**3, large  # radius 15-30 mm (clipped by the brain at most a little)
    assert 0 < small < 4 * 4 / 3 * np.pi * 10**3, small


def test_determinism(template):
    a = synthesize_subject(template, (1, 1, 0), "tumour")
    b = synthesize_subject(template, (1, 1, 0), "tumour")
    c = synthesize_subject(template, (2, 1, 0), "tumour")
    for contrast in CONTRASTS:
        np.testing.assert_array_equal(a.images[contrast], b.images[contrast])
        assert not np.array_equal(a.images[contrast], c.images[contrast])
    np.testing.assert_array_equal(a.lesion, b.lesion)
    assert not np.array_equal(a.lesion, c.lesion)


def test_subjects_vary_but_share_anatomy(template):
    a = synthesize_subject(template, (0, 1, 0))
    b = synthesize_subject(template, (0, 1, 1))
    ma, mb = a.brainmask.astype(bool), b.brainmask.astype(bool)
    dice = 2 * (ma & mb).sum() / (ma.sum() + mb.sum())
    assert 0.85 < dice < 0.999, dice
    assert a.params["ventricle_scale"] != b.params["ventricle_scale"]


@pytest.mark.parametrize("kind", BRAIN_OOD_KINDS)
def test_ood_volumes(template, kind):
    case, description = make_brain_ood(kind, template, (0, 4, 0))
    assert description
    assert set(CONTRASTS) <= set(case.images)
    assert abs(np.linalg.det(case.affine[:3, :3])) > 0
    for volume in case.images.values():
        assert volume.shape == case.brainmask.shape
        assert np.isfinite(volume).all()
    codes = nib.aff2axcodes(case.affine)
    zooms = np.sqrt((case.affine[:3, :3] ** 2).sum(0))
    if kind == "reoriented_pir":
        assert codes == ("P", "I", "R")
        ref = synthesize_subject(template, (0, 4, 0))
        # the same world point holds the same value in both orientations
        ijk = np.array([40, 60, 50, 1.0])
        pir_ijk = np.rint(np.linalg.inv(case.affine) @ (ref.affine @ ijk)).astype(int)[:3]
        assert case.images["T2w"][tuple(pir_ijk)] == ref.images["T2w"][40, 60, 50]
    elif kind == "anisotropic":
        np.testing.assert_allclose(zooms, [2.0, 2.0, 8.0])
    elif kind == "ct_head":
        assert case.images["T1w"].min() <= -1000
        assert case.images["T1w"].max() > 300
    else:
        assert codes == ("R", "A", "S")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        build_demo(tmp_path, size="huge")
    with pytest.raises(ValueError, match="unknown demo dataset"):
        build_demo(tmp_path, only=["brain_ct"])
    with pytest.raises(ValueError, match="lesion"):
        synthesize_subject(load_template("small"), 0, "glioma")


@pytest.mark.slow
def test_full_small_build(tmp_path):
    build_demo(tmp_path, size="small", only=["brain_mri"])
    data = json.loads((tmp_path / "brain_mri" / "dataset.json").read_text())
    assert [len(data[k]) for k in ("training", "validation", "test", "ood")] == [40, 8, 16, 7]
    assert sorted({e["lesion_type"] for e in data["test"]}) == sorted({*LESION_KINDS, "none"})
    assert sum(e["is_anomalous"] for e in data["test"]) == 12


def test_validation_lesion_twins_share_anatomy_with_the_healthy_validation_subjects(tiny_set):
    root, data = tiny_set
    assert len(data["validation_lesion"]) == len(data["validation"]) == 1
    twin, healthy = data["validation_lesion"][0], data["validation"][0]
    assert twin["case"] == healthy["case"]
    assert twin["is_anomalous"] == 1
    lesion, aff = _load(root / twin["label"])
    t1, aff_t1 = _load(root / twin["T1w"])
    h1, _ = _load(root / healthy["T1w"])
    np.testing.assert_allclose(aff, aff_t1)
    assert lesion.sum() > 0
    assert lesion.sum() == twin["lesion_voxels"]
    near = ndi.binary_dilation(lesion > 0, iterations=3)
    assert np.array_equal(t1[~near], h1[~near]), "outside the lesion the twin is the healthy validation subject"
    assert not np.array_equal(t1[lesion > 0], h1[lesion > 0])
    test_masks = [_load(root / e["label"])[0] for e in data["test"] if e["is_anomalous"]]
    assert all(not np.array_equal(m, lesion) for m in test_masks)
