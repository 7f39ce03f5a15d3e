from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medood.cli import main
from medood.data.datalist import bundle_datalist as datalist
from medood.data.errors import DataError
from medood.detectors import list_detectors
from medood.engines.resume import latest_checkpoint
from medood.reports import worst_slices_montage, write_slicer_scene
from medood.utils.checkpoints import compact_checkpoint as compact_weights
from medood.utils.checkpoints import load_state as load_weights
from medood.utils.checkpoints import save_state as save_weights


def _nii(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr.astype(np.float32), np.eye(4)), str(path))


def test_datalist_from_json_and_from_a_plain_folder(tmp_path) -> None:
    _nii(tmp_path / "a" / "x_T1w.nii.gz", np.ones((4, 4, 4)))
    _nii(tmp_path / "a" / "x_T2w.nii.gz", np.ones((4, 4, 4)))
    _nii(tmp_path / "a" / "x_lesion.nii.gz", np.zeros((4, 4, 4)))
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {
                "test": [
                    {"T1w": "a/x_T1w.nii.gz", "T2w": "a/x_T2w.nii.gz", "label": "a/x_lesion.nii.gz", "is_anomalous": 0}
                ]
            }
        )
    )
    items = datalist(tmp_path, "test", "T2w", keep=["label", "is_anomalous"])
    assert items == [
        {
            "image": str((tmp_path / "a/x_T2w.nii.gz").resolve()),
            "is_anomalous": 0,
            "label": str((tmp_path / "a/x_lesion.nii.gz").resolve()),
        }
    ]
    with pytest.raises(DataError, match="no list 'training'"):
        datalist(tmp_path, "training")
    (tmp_path / "dataset.json").unlink()
    assert len(datalist(tmp_path)) == 3  # no dataset.json: every NIfTI under the folder


def test_load_weights_prefixes_and_clear_errors(tmp_path) -> None:
    src, dst = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)), None
    save_weights(src, tmp_path / "m.pt")
    dst = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    load_weights(dst, tmp_path / "m.pt", prefixes=["0."])
    torch.testing.assert_close(dst[0].weight, src[0].weight)
    assert not torch.equal(dst[1].weight, src[1].weight)
    torch.save(src.state_dict(), tmp_path / "bare.pt")  # Ignite's single-object layout (no "model" key)
    load_weights(dst, tmp_path / "bare.pt")
    torch.testing.assert_close(dst[1].weight, src[1].weight)
    with pytest.raises(DataError, match="checkpoint does not exist"):
        load_weights(dst, tmp_path / "missing.pt")
    with pytest.raises(DataError, match="no parameters start with"):
        load_weights(dst, tmp_path / "m.pt", prefixes=["nope."])
    with pytest.raises(FileNotFoundError, match="to resume from"):
        latest_checkpoint(tmp_path, "stage_last")


def test_montage_and_slicer_script(tmp_path) -> None:
    img = np.zeros((8, 9, 6))
    img[2:6, 2:7, 1:5] = 1.0
    lesion = np.zeros_like(img)
    lesion[3, 3, 2] = 1
    _nii(tmp_path / "in" / "c_T1w.nii.gz", img)
    _nii(tmp_path / "in" / "c_lesion.nii.gz", lesion)
    amap = np.zeros_like(img)
    amap[3, 3, 2] = 5.0
    _nii(tmp_path / "out" / "c_T1w_anomaly_map.nii.gz", amap)
    cases = [{"image": str(tmp_path / "in" / "c_T1w.nii.gz"), "label": str(tmp_path / "in" / "c_lesion.nii.gz")}]
    png = worst_slices_montage(tmp_path / "out", cases, n=2, columns=2, map_range=(1.0, 4.0))
    assert png is not None and png.stat().st_size > 0
    from PIL import Image

    assert Image.open(png).size == (2 * 8 * 2, 9 * 2)  # two tiles side by side, upscaled by 2
    script = write_slicer_scene(tmp_path / "out", images={"c_T1w": cases[0]["image"]}).read_text()
    assert "'c_T1w_anomaly_map.nii.gz'" in script and "c_T1w.nii.gz" in script
    compile(script, "open_in_slicer.py", "exec")
    assert worst_slices_montage(tmp_path / "empty", cases) is None


def test_medood_list_prints_every_detector(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in list_detectors())
    assert "mim" in out and "yes" in out
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


def test_compact_weights_halves_floats_but_keeps_calibration_and_integers(tmp_path: Path) -> None:
    state = {
        "layer.weight": torch.randn(4, 4),
        "calibration.map_quantiles": torch.linspace(0, 1, 5, dtype=torch.float32),
        "counter": torch.tensor([3]),
    }
    path = tmp_path / "w.pt"
    torch.save({"model": state}, path)
    compact_weights(path)
    out = torch.load(path, weights_only=True)["model"]
    assert out["layer.weight"].dtype == torch.float16
    torch.testing.assert_close(out["layer.weight"].float(), state["layer.weight"], atol=2e-3, rtol=1e-3)
    assert out["calibration.map_quantiles"].dtype == torch.float32, "thresholds keep full precision"
    assert torch.equal(out["counter"], state["counter"])
    net = torch.nn.Linear(4, 4, bias=False)
    net.load_state_dict({"weight": out["layer.weight"]})
    assert net.weight.dtype == torch.float32, "load_state_dict casts back to the network's dtype"
