"""``medood guard`` against the MONAI model zoo's own published inference configs (the compatibility matrix).

Each bundle: the copied config (``tests/data/model_zoo``), seeded random weights, tiny synthetic cases; the guard
fits through the bundle's own preprocessing and inferer, the original and the companion run with the model zoo's
command line (``monai.bundle run ... --bundle_root <bundle>``; for spleen the companion as a real subprocess), the
original outputs are byte-identical, every case gets a score and a consistent flag, and the run-time ratio
companion / original is printed. Spleen is the issue's regression: its 40x40x32 volumes crash the published UNet
when run whole (``Sizes of tensors must match``), which is what the old discovery did. ``scripts/bench_guard.py``
runs the same matrix with more cases and writes ``docs/benchmarks/guard.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from medood.data.errors import DataError
from medood.engines.guard import build_guard, guard_threshold, read_id_datalist
from medood.utils.conformal import CalibrationSizeError
from tests.helpers.model_zoo import CASES, ZOO, make_bundle, run_matrix_case, write_cases

N_OUTPUTS = {"endoscopic_inbody_classification": 1}  # one predictions.csv; the others one file per case


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_model_zoo_bundle_guarded(name: str, tmp_path: Path) -> None:
    result = run_matrix_case(CASES[name], tmp_path, subprocess_companion=name == "spleen_ct_segmentation")
    note = " (the companion in a new process: Python and MONAI start included)" if name.startswith("spleen") else ""
    print(f"{name}: run time companion / original = {result.ratio:.2f}{note}; layers {result.layers}")
    assert result.layers, "layers were found through the bundle's own inferer"
    assert len(result.outputs) == N_OUTPUTS.get(name, 4), result.outputs
    assert result.identical, "the original outputs are byte-identical with and without the guard"
    assert len(result.scores) == 4 and all(math.isfinite(s) for s in result.scores.values()), result.scores
    threshold = result.guard_info["threshold"]
    assert all(result.flagged[c] == int(s > threshold) for c, s in result.scores.items())
    assert result.guard_info["threshold_rule"]["rule"] == "split-conformal"
    assert result.guard_info["threshold_rule"]["n"] == 3 and result.guard_info["n_cases"] == 4


def test_every_matrix_bundle_has_its_copied_config_and_notice() -> None:
    assert (ZOO / "NOTICE.md").is_file() and "Apache License" in (ZOO / "LICENSE").read_text()
    for name, case in CASES.items():
        config = ConfigParser.load_config_file(str(ZOO / name / "configs" / case.config))
        assert {"network_def", "preprocessing", "evaluator"} <= set(config), name
        assert (ZOO / name / "configs" / "metadata.json").is_file()


def test_guard_threshold_refuses_or_warns_on_too_few_cases() -> None:
    scores = [0.1, 0.3, 0.2]
    with pytest.raises(CalibrationSizeError, match="needs at least 19"):
        guard_threshold(scores, 0.05)
    rule = guard_threshold(scores, 0.05, allow_small=True)
    assert rule["threshold"] == 0.3 and "allow-small-calibration" in rule["warning"] and rule["n"] == 3
    rule = guard_threshold([float(i) for i in range(19)], 0.05)  # k = ceil(20 * 0.95) = 19: the largest
    assert rule["rule"] == "split-conformal" and rule["threshold"] == 18.0 and rule["rank"] == 19


def test_val_fraction_sets_the_held_out_share(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps([f"/abs/{i}.nii.gz" for i in range(20)]))
    assert [len(x) for x in read_id_datalist(path, val_fraction=0.5)] == [10, 10]
    assert [len(x) for x in read_id_datalist(path, val_fraction=0.25)] == [15, 5]
    with pytest.raises(ValueError, match="val_fraction"):
        read_id_datalist(path, val_fraction=1.0)


def _tiny_bundle(tmp_path: Path) -> tuple[Path, Path]:
    """The ventricular (2D UNet over slices) bundle with 3 fit and 3 validation cases."""
    case = CASES["ventricular_short_axis_3label"]
    bundle = make_bundle(case, tmp_path)
    fit = write_cases(case, tmp_path / "id", 3, 0, seed=1, prefix="fit_")
    val = write_cases(case, tmp_path / "id", 3, 0, seed=2, prefix="val_")
    (tmp_path / "id.json").write_text(json.dumps({"training": fit, "validation": val}))
    return bundle, tmp_path / "id.json"


def test_small_calibration_refused_before_fitting_or_recorded(tmp_path: Path) -> None:
    bundle, datalist = _tiny_bundle(tmp_path)
    overrides = CASES["ventricular_short_axis_3label"].overrides
    with pytest.raises(CalibrationSizeError, match="3 in-distribution validation cases"):
        build_guard(bundle, datalist, tmp_path / "c", overrides=overrides)
    assert not (tmp_path / "c").exists()
    (bundle / "output").mkdir()  # the bundle's output_dir ("./output" from the bundle folder) is never linked
    (bundle / "label").mkdir()  # any other entry is
    out = build_guard(bundle, datalist, tmp_path / "c", overrides=overrides, allow_small_calibration=True)
    rule = json.loads((out / "configs" / "metadata.json").read_text())["guard"]["threshold_rule"]
    assert "warning" in rule and rule["expected_rate"] is None
    companion = json.loads((out / "configs" / "inference.json").read_text())
    assert companion["guard_writer"]["threshold_info"]["warning"] == rule["warning"], "guard.json will carry it"
    assert companion["bundle_root"] == str(out) and (out / "models" / "model.pt").resolve().is_file()
    assert companion["inferer"]["roi_size"] == [48, 48], "the fitting overrides are in the companion"
    assert (out / "label").is_symlink() and not (out / "output").exists()


def test_unhookable_network_names_the_config_entry(tmp_path: Path) -> None:
    bundle, datalist = _tiny_bundle(tmp_path)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"] = {"_target_": "torch.nn.Flatten"}  # no feature map at all
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    torch.save({}, bundle / "models" / "model.pt")
    with pytest.raises(DataError, match=r"entry 'network' \(Flatten\) cannot be hooked.*--layers"):
        build_guard(bundle, datalist, tmp_path / "c", alpha=0.25, overrides={"inferer#roi_size": [48, 48]})
    config["inferer"]["_target_"] = "NoSuchInferer"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="entry 'inferer'"):
        build_guard(bundle, datalist, tmp_path / "c", alpha=0.25)
