"""The MONAI Label app's parts that need no MONAI Label: studies, bundles, the output transform, the shims."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medood.inferers import OODInferer
from medood.monailabel import (
    MAPS_FOLDER,
    AnomalyOutputd,
    HideStudyPathd,
    anomaly_map_path,
    bundle_makes_maps,
    resolve_bundle,
    resolve_study,
)
from medood.monailabel.compat import install_shims, make_grid, save_image
from medood.monailabel.server import APP_MAIN, write_app
from medood.utils.errors import DataError

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def test_resolve_study_refuses_paths_unknown_ids_and_escapes(tmp_path) -> None:
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "case1.nii.gz").write_bytes(b"x")
    (tmp_path / "secret.nii.gz").write_bytes(b"x")
    known = {"case1": str(studies / "case1.nii.gz"), "evil": str(tmp_path / "secret.nii.gz")}
    lookup = known.get
    assert resolve_study(studies, "case1", lookup) == (studies / "case1.nii.gz").resolve()
    for bad, message in [
        ("../secret", "is a path"),
        ("/etc/passwd", "is a path"),
        ("..", "is a path"),
        ("a\\..\\b", "is a path"),
        ("nope", "not a study"),
        ("evil", "outside the studies folder"),
        (None, "must be the id"),
        ("", "must be the id"),
    ]:
        with pytest.raises(ValueError, match=message):
            resolve_study(studies, bad, lookup)
    (studies / "link.nii.gz").symlink_to(tmp_path / "secret.nii.gz")
    with pytest.raises(ValueError, match="outside the studies folder"):
        resolve_study(studies, "link", {"link": str(studies / "link.nii.gz")}.get)


def test_bundles_resolve_and_only_map_bundles_are_served(tmp_path) -> None:
    mim = resolve_bundle("mim_brain_mri_anomaly_segmentation")
    assert mim == (BUNDLES / "mim_brain_mri_anomaly_segmentation").resolve()
    assert resolve_bundle(str(mim)) == mim
    assert bundle_makes_maps(mim)
    assert not bundle_makes_maps(resolve_bundle("nero_endoscopy_ood_classification"))
    with pytest.raises(DataError, match=r"known bundles: .*mim_brain_mri_anomaly_segmentation"):
        resolve_bundle("no_such_bundle")
    bad = tmp_path / "b"
    (bad / "configs").mkdir(parents=True)
    with pytest.raises(DataError, match=r"metadata\.json: has no readable network_data_format"):
        bundle_makes_maps(bad)


def _data(tmp_path: Path, threshold) -> dict:
    affine = torch.tensor(np.diag([2.0, 3.0, 4.0, 1.0]))
    amap = torch.zeros(1, 5, 6, 4)
    amap[0, 2, 3, 1] = 2.0
    amap[0, 0, 0, 0] = float("nan")
    data = {"pred": MetaTensor(amap, affine=affine), "image_path": str(tmp_path / "case7.nii.gz"), "x": 1}
    data = HideStudyPathd()(data)
    assert "image_path" not in data and data["study_path"].endswith("case7.nii.gz")
    data.update(ood_score=torch.tensor([1.5]), threshold=threshold)
    return data


def test_anomaly_output_saves_the_map_and_returns_mask_and_scores(tmp_path) -> None:
    scorer = OODInferer(slice_axes=[2], slice_reduction="max")
    t = AnomalyOutputd(tmp_path, default_threshold=1.0, score_threshold=1.0, scorer=scorer)
    d = t(_data(tmp_path, None))
    saved = anomaly_map_path(tmp_path, "case7.nii.gz")
    assert saved == tmp_path / MAPS_FOLDER / "case7_anomaly_map.nii.gz" and saved.is_file()
    img = nib.load(str(saved))
    assert img.get_data_dtype() == np.float32 and np.isfinite(img.get_fdata()).all()
    np.testing.assert_allclose(img.affine, np.diag([2.0, 3.0, 4.0, 1.0]))
    assert d["pred"].dtype == np.uint8 and d["pred"].shape == (5, 6, 4) and d["pred"].sum() == 1
    np.testing.assert_allclose(d["pred_meta_dict"]["affine"], np.diag([2.0, 3.0, 4.0, 1.0]))
    r = d["result"]
    assert r["volume_score"] == 1.5 and r["flagged"] is True and r["threshold"] == 1.0
    assert r["threshold_source"] == "healthy calibration" and r["slice_scores"] == {"2": [0.0, 2.0, 0.0, 0.0]}
    assert d["image_path"].endswith("case7.nii.gz")
    assert t(_data(tmp_path, 1.0))["result"]["threshold_source"] == "healthy calibration"  # the config default
    d = t(_data(tmp_path, "3.0"))
    assert d["pred"].sum() == 0 and d["result"]["threshold_source"] == "request"
    with pytest.raises(ValueError, match="threshold must be a number"):
        t(_data(tmp_path, "high"))
    with pytest.raises(ValueError, match="give a threshold"):
        AnomalyOutputd(tmp_path)(_data(tmp_path, ""))


def test_anomaly_output_map_window_worst_slices_thresholds_and_codes(tmp_path) -> None:
    from medood.monailabel.studies import MAPS_DIR_KEY, XFORM_KEY

    study = tmp_path / "case7.nii.gz"
    img = nib.Nifti1Image(np.zeros((5, 6, 4), np.float32), np.diag([2.0, 3.0, 4.0, 1.0]))
    img.set_qform(img.affine, code=4)
    img.set_sform(img.affine, code=2)
    nib.save(img, str(study))
    record = {"map_threshold": 1.0, "score_threshold": 1.0, "window": [1.0, 4.0], "id_scores": None}
    scorer = OODInferer(slice_axes=[2], slice_reduction="max")
    t = AnomalyOutputd(tmp_path, default_threshold=1.0, score_threshold=2.0, scorer=scorer, thresholds=record)
    data = {**_data(tmp_path, None), "anomaly_output": "map", MAPS_DIR_KEY: str(tmp_path / "session" / "maps")}
    d = t(data)
    r = d["result"]
    assert d["pred"].dtype == np.float32 and d["pred"].max() == 2.0 and d["result_dtype"] == "float32"
    assert r["anomaly_output"] == "map" and r["anomalous_voxels"] == 1 and r["flagged"] is False
    assert r["window"] == [1.0, 4.0] and r["worst_slices"][0] == {"axis": 2, "slice": 1, "score": 2.0}
    assert len(r["worst_slices"]) == 4  # 4 slices on axis 2, fewer than 5
    saved = tmp_path / "session" / "maps" / "case7_anomaly_map.nii.gz"
    assert r["anomaly_map"] == str(saved) and d[XFORM_KEY] == (4, 2)
    header = nib.load(str(saved)).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (4, 2)
    assert json.loads((saved.parent / "thresholds.json").read_text()) == record
    assert r["thresholds_file"] == str(saved.parent / "thresholds.json")


def test_worst_slices_and_xform_codes_of_other_files(tmp_path) -> None:
    from medood.monailabel.studies import worst_slices, xform_codes

    rows = worst_slices({"0": [0.1, 0.5, 0.3], "2": [0.9, 0.0]}, k=2)
    assert [(r["axis"], r["slice"]) for r in rows] == [(2, 0), (0, 1), (0, 2), (2, 1)]
    (tmp_path / "x.nrrd").write_bytes(b"not nifti")
    assert xform_codes(tmp_path / "x.nrrd") == (1, 1)


def test_torchvision_shim_functions() -> None:
    batch = torch.stack([torch.full((1, 2, 3), float(i)) for i in range(3)])
    grid = make_grid(batch, nrow=2, padding=1, normalize=True)
    assert grid.shape == (3, 2 * 3 + 1, 2 * 4 + 1)  # 2 rows x 2 columns of 2x3 tiles, 1-pixel padding
    assert grid[0, 1, 1] == 0.0 and grid[0, 1, 5] == 0.5 and grid[0, 4, 1] == 1.0 and grid[0, 0, 0] == 0.0
    assert torch.equal(grid[0], grid[2]), "grey images are repeated to RGB"


def test_save_image_and_install_shims(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    save_image(torch.rand(2, 3, 4, 5), tmp_path / "g.png", nrow=2, padding=0)
    assert Image.open(tmp_path / "g.png").size == (10, 4)
    for name in [m for m in sys.modules if m.split(".")[0] == "torchvision" or m == "pydicom._storage_sopclass_uids"]:
        monkeypatch.delitem(sys.modules, name)
    import builtins

    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.split(".")[0] == "torchvision":
            raise ImportError("No module named 'torchvision' (test)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    try:
        installed = install_shims()
        assert "torchvision.utils" in installed
        assert sys.modules["torchvision.utils"].make_grid is make_grid
        assert sys.modules["torchvision"].__version__ == "0.0.0"
        from pydicom._storage_sopclass_uids import SegmentationStorage  # type: ignore[import-not-found]

        assert SegmentationStorage == "1.2.840.10008.5.1.4.1.1.66.4"
        assert "torchvision.utils" not in install_shims(), "idempotent"
    finally:
        for name in ("torchvision", "torchvision.utils", "pydicom._storage_sopclass_uids"):
            sys.modules.pop(name, None)


def test_write_app_and_serve_rejects_bad_input(tmp_path) -> None:
    app = write_app(tmp_path / "app")
    assert (app / "main.py").read_text() == APP_MAIN and (app / "model").is_dir()
    compile(APP_MAIN, "main.py", "exec")
    from medood.cli import main

    assert main(["label", "serve", "--studies", str(tmp_path / "none"), "--bundle", "x"]) == 2
    studies = tmp_path / "studies"
    studies.mkdir()
    assert main(["label", "serve", "--studies", str(studies), "--bundle", "nero_endoscopy_ood_classification"]) == 2


def test_serve_refuses_a_network_host_without_token(tmp_path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    from medood.cli import main
    from medood.monailabel.server import TOKEN_ENV

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    args = ["label", "serve", "--studies", str(tmp_path), "--bundle", "mim_brain_mri_anomaly_segmentation"]
    assert main([*args, "--host", "0.0.0.0"]) == 2
    assert "set a token" in caplog.text
    assert main([*args, "--host", "127.0.0.1", "--cors-origin", "*"]) == 2
    assert main([*args, "--token", "short"]) == 2
    assert not list(tmp_path.iterdir()), "nothing written when refused"


@pytest.mark.skipif(importlib.util.find_spec("monailabel") is None, reason="MONAI Label is not installed")
def test_serve_refuses_a_session_store_inside_the_studies(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from medood.monailabel.server import serve

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shims = ("torchvision", "torchvision.utils", "pydicom._storage_sopclass_uids")
    had = {name for name in shims if name in sys.modules}
    try:
        with pytest.raises(ValueError, match="session store must lie outside the studies folder"):
            serve(tmp_path, "mim_brain_mri_anomaly_segmentation", app_dir=tmp_path.parent / "app")
    finally:
        for name in set(shims) - had:  # serve() installed the app's import shims: not for the other tests
            sys.modules.pop(name, None)
    assert not list(tmp_path.glob("medood-label-sessions-*")), "the refused store is removed"
