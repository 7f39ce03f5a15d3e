"""The shifted-site validation set: deterministic, exact lesion masks, shifts outside the demo training range."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from medood.cli import main
from medood.data.demo.brain import load_template, synthesize_subject
from medood.data.demo.shifted_site import SITES, lesion_components, synthesize_shifted


@pytest.fixture(scope="module")
def template():
    return load_template("small")


def test_twins_differ_only_near_the_lesion_and_masks_are_inside_the_brain(template):
    healthy = synthesize_shifted(template, (0, 20, 0), "mprage_3t")
    lesioned = synthesize_shifted(template, (0, 20, 0), "mprage_3t", "medium", lesion_seed=(0, 21, 0))
    lesion = lesioned["lesion"] > 0
    assert lesion.sum() > 0 and not healthy["lesion"].any()
    assert not (lesion & (lesioned["brainmask"] == 0)).any()
    changed = np.abs(healthy["image"] - lesioned["image"]) > 1e-6
    near = ndi.binary_dilation(lesion, iterations=2)
    assert changed[lesion].mean() > 0.9 and not (changed & ~near).any()
    assert (healthy["image"][lesioned["brainmask"] == 0] == 0).all()


def test_shifted_subjects_are_outside_the_demo_range(template):
    demo = synthesize_subject(template, (0, 1, 0), contrasts=("T1w",))
    sizes = []
    for i, site in enumerate(sorted(SITES)):
        sub = synthesize_shifted(template, (0, 20, i), site)
        p = sub["params"]
        assert p["deform_mm"] > 3.5 and (p["scale"] < 0.93 or p["scale"] > 1.04)
        assert p["ventricle_scale"] > 0.3 or p["ventricle_scale"] < -0.2
        sizes.append(int(sub["brainmask"].sum()))
    # head size: at least one subject's brain differs from a demo brain by > 15 %
    assert max(abs(s / demo.brainmask.sum() - 1) for s in sizes) > 0.15


def test_cli_is_deterministic_and_lists_sized_lesions(tmp_path):
    for name in ("a", "b"):
        assert main(["data", "shifted-site", "--out", str(tmp_path / name), "--seed", "3", "--subjects", "1"]) == 0
    a = json.loads((tmp_path / "a" / "dataset.json").read_text())
    b = json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert a == b and len(a["validation"]) == 1 and len(a["validation_lesion"]) == 1
    entry = a["validation_lesion"][0]
    label = np.asarray(nib.load(str(tmp_path / "a" / entry["label"])).dataobj)
    assert sorted(lesion_components(label)) == sorted(entry["lesion_components"])
    assert entry["lesion_voxels"] == int(label.sum()) > 0
    img_a = np.asarray(nib.load(str(tmp_path / "a" / entry["image"])).dataobj)
    img_b = np.asarray(nib.load(str(tmp_path / "b" / entry["image"])).dataobj)
    assert np.array_equal(img_a, img_b)
