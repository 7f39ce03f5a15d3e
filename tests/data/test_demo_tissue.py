"""Tissue labels of the demo brain subjects: re-derived from the seed, checked against the stored brain masks."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medood.cli import main
from medood.data.demo import build_demo
from medood.data.demo.brain import load_template, synthesize_subject
from medood.data.demo.brain_set import subject_seed
from medood.data.demo.tissue import subject_tissue, write_tissue_labels
from medood.data.errors import DataError


@pytest.mark.slow
def test_tissue_labels_of_a_tiny_demo_set(tmp_path: Path) -> None:
    build_demo(tmp_path, size="small", seed=5, only=["brain_mri"], n_train=2, n_val=1, n_test=1, n_ood=1)
    root = tmp_path / "brain_mri"
    written = write_tissue_labels(root, tmp_path / "labels")
    datalist = json.loads(written.read_text())
    entries = datalist["training"] + datalist["validation"] + datalist["test"] + datalist["validation_lesion"]
    assert len(entries) == 5 and all("tissue" in e for e in entries)
    for entry in datalist["training"]:
        tissue = np.asarray(nib.load(str(tmp_path / "labels" / entry["tissue"])).dataobj)
        t1 = np.asarray(nib.load(entry["T1w"]).get_fdata())  # absolute path to the original image
        mask = np.asarray(nib.load(entry["brainmask"]).dataobj)
        assert tissue.dtype == np.uint8 and set(np.unique(tissue)) == {0, 1, 2, 3}
        np.testing.assert_array_equal(tissue > 0, mask > 0)
        means = [t1[tissue == k].mean() for k in (1, 2, 3)]
        assert means[0] < means[1] < means[2], "T1w: CSF darker than grey matter, darker than white matter"
    # the same subject re-synthesised from its seed has exactly that brain mask
    subject = synthesize_subject(load_template("small"), subject_seed(5, "train", 1))
    labels, mask = subject_tissue(load_template("small"), subject_seed(5, "train", 1))
    np.testing.assert_array_equal(mask, subject.brainmask)
    # in place through the CLI: dataset.json gains the relative "tissue" paths
    assert main(["data", "tissue", "--brain-dir", str(root)]) == 0
    in_place = json.loads((root / "dataset.json").read_text())
    assert in_place["training"][1]["tissue"] == "train/sub-001_tissue.nii.gz"
    np.testing.assert_array_equal(np.asarray(nib.load(str(root / "train/sub-001_tissue.nii.gz")).dataobj), labels)


def test_a_set_from_another_seed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset\.json"):
        write_tissue_labels(tmp_path)
    template = load_template("small")
    _, mask = subject_tissue(template, subject_seed(0, "train", 0))
    (tmp_path / "train").mkdir()
    nib.save(nib.Nifti1Image(1 - mask, template.affine), str(tmp_path / "train" / "sub-000_brainmask.nii.gz"))
    datalist = {
        "seed": 0,
        "spacing_mm": [2.0] * 3,
        "training": [{"case": "sub-000", "brainmask": "train/sub-000_brainmask.nii.gz"}],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(datalist))
    with pytest.raises(DataError, match="differs from the brain mask"):
        write_tissue_labels(tmp_path)
