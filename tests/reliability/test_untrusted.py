"""Untrusted artefacts: a checkpoint that would run code is refused before anything runs; configs are parsed as plain
data, configs from outside a bundle are flagged, and MONAI's warning about config code is never silenced."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from medood.utils.checkpoints import compact_checkpoint, load_checkpoint, load_state
from medood.utils.config import read_config
from medood.utils.errors import DataError
from tests.reliability.corpus.checkpoints import RunsCode

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "mim_brain_mri_anomaly_segmentation" / "configs"


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy_pickle"])
def test_checkpoint_that_would_run_code_is_refused_by_every_loader(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    content = {"model": {"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}, "extra": RunsCode(marker)}
    torch.save(content, path, _use_new_zipfile_serialization=zip_format)
    for load in (load_checkpoint, lambda p: load_state(nn.Linear(2, 2), p), compact_checkpoint):
        refused = r"model\.pt: refused: it holds Python objects \(code: .*getattr.*\) — load only weights you trust"
        with pytest.raises(DataError, match=refused) as info:
            load(path)
        assert "weights_only=True" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists(), "unpickling ran code"
    torch.load(path, weights_only=False)  # the file really is armed: trusting it would have run the code
    assert marker.exists()


def test_plain_state_dict_checkpoint_still_loads(tmp_path: Path) -> None:
    torch.save({"model": nn.Linear(2, 2).state_dict(), "config": {"lr": 0.1, "tags": ["a"]}}, tmp_path / "ok.pt")
    net = load_state(nn.Linear(2, 2), tmp_path / "ok.pt")
    assert isinstance(net, nn.Linear) and load_checkpoint(tmp_path / "ok.pt")["config"] == {"lr": 0.1, "tags": ["a"]}


def test_yaml_python_tag_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "evil.yaml").write_text(f"net: !!python/object/apply:pathlib.Path.touch ['{marker}']\n")
    with pytest.raises(DataError, match="refused"):
        read_config(tmp_path / "evil.yaml")
    assert not marker.exists()


def test_bundle_configs_read_as_data_and_outside_configs_are_flagged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="medood.utils.config"):
        inference = read_config(CONFIGS / "inference.yaml")
    assert inference["network_def"]["_target_"] == "medood.detectors.MIMDetector"
    assert caplog.records == [], "a bundle's own config is not flagged"
    (tmp_path / "override.yaml").write_text("pixdim: [1.0, 1.0, 1.0]\n")
    with caplog.at_level(logging.WARNING, logger="medood.utils.config"):
        assert read_config(tmp_path / "override.yaml") == {"pixdim": [1.0, 1.0, 1.0]}
        read_config(tmp_path / "override.yaml", bundle_root=CONFIGS.parent)
    assert len(caplog.records) == 2
    assert "not in a bundle's configs/ folder" in caplog.records[0].getMessage()
    assert "outside the bundle folder" in caplog.records[1].getMessage()
    assert all("run as Python code" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_monai_config_code_warning_is_not_silenced(tmp_path: Path) -> None:
    """With every medood module imported and the bundle's logging.conf applied, MONAI still warns when it parses
    a config file (GHSA-873f-pvrv-4x83)."""
    (tmp_path / "tiny.yaml").write_text("value: 1\n")
    script = f"""
import importlib, logging.config, pkgutil
import medood
for module in pkgutil.walk_packages(medood.__path__, "medood."):
    if not module.name.endswith("__main__"):
        try:
            importlib.import_module(module.name)
        except ModuleNotFoundError as e:  # an optional extra (e.g. monailabel) that is not installed
            print("skipped", module.name, e)
logging.config.fileConfig({str(CONFIGS / "logging.conf")!r}, disable_existing_loggers=False)
from monai.bundle.scripts import create_workflow
create_workflow(config_file={str(tmp_path / "tiny.yaml")!r}, workflow_type="infer", logging_file=False)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": ""}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "GHSA-873f-pvrv-4x83" in run.stderr, run.stderr[-3000:]
