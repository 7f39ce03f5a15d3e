"""Auxiliary OOD datalists: corruptions of ID items, other folders, and the refusal of evaluation folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medood.data.auxiliary import auxiliary_datalist, check_disjoint, corruption_datalist
from medood.data.errors import DataError
from tests.helpers.class_folders import make_class_folders


def test_corruption_datalist_is_reproducible_and_never_carries_labels() -> None:
    items = [{"image": f"/d/{i}.png", "label": i % 2, "case": f"c{i}"} for i in range(4)]
    aux = corruption_datalist(items, ["noise", "motion"], per_image=2, seed=1, keep=("case",))
    assert aux == corruption_datalist(items, ["noise", "motion"], per_image=2, seed=1, keep=("case",))
    assert len(aux) == 8 and [a["image"] for a in aux[:2]] == ["/d/0.png"] * 2
    assert all("label" not in a and a["aux_source"] == f"corruption/{a['corruption']}" for a in aux)
    assert aux[0]["case"] == "c0"
    assert corruption_datalist(items, [], per_image=2) == []


def test_auxiliary_datalist_lists_other_folders_and_refuses_evaluation_sets(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "organ_a")
    other = make_class_folders(tmp_path / "organ_b")
    aux = auxiliary_datalist([other / "train"], forbidden=[root / "ood_near", root / "ood_far"])
    assert len(aux) == 18 and all(a["aux_source"] == "organ_b/train" for a in aux)
    both = [other / "train", root / "train"]
    sample = auxiliary_datalist(both, max_per_folder=5, seed=1)
    assert len(sample) == 10 and sample == auxiliary_datalist(both, max_per_folder=5, seed=1)
    assert {a["image"] for a in sample} <= {a["image"] for a in auxiliary_datalist(both)}
    with pytest.raises(DataError, match="evaluation folder"):
        auxiliary_datalist([root / "ood_far"], forbidden=[root / "ood_near", root / "ood_far"])
    link = tmp_path / "innocent_name"
    os.symlink(root / "ood_near", link)  # a symlink does not hide an evaluation folder
    with pytest.raises(DataError, match="evaluation folder"):
        check_disjoint(auxiliary_datalist([link]), [root / "ood_near"])
