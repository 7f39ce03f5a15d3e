"""The run-folder format (medood.io.run_folder): one scores.csv layout, formula escaping, run ownership (run.json,
new / resume / overwrite), stale temporaries, and kill -9 mid-write then rerun giving the uninterrupted outputs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medood.io import run_folder as rf
from medood.io.result import OODResult

ROOT = Path(__file__).resolve().parents[2]


def test_scores_csv_layout_and_formula_escaping(tmp_path: Path) -> None:
    rows = [
        OODResult("=HYPERLINK(1)", 0.5, label=1, image="/x/=a.nii.gz").decide(0.1).row(),
        OODResult("+cmd", -0.25).decide(None).row(),
        OODResult("@x", 1.0).row(),
        OODResult("-1", 2.0).row(),
        OODResult("\tTab", 3.0).row(),
        OODResult("plain", 4.0).row(),
    ]
    path = rf.write_score_rows(tmp_path / rf.SCORES_CSV, rows)
    raw = list(csv.reader(path.open()))
    assert raw[0] == ["case", "score", "flagged", "label", "image"]
    cells = [c for r in raw[1:] for c in (r[0], r[4])]
    assert not [c for c in cells if c and c[0] in "=+-@\t\r"], "no cell may start like a spreadsheet formula"
    assert raw[2][1] == "-0.25", "numbers stay numbers (a negative score is not escaped)"
    back = rf.read_score_rows(path)
    assert [r.case for r in back] == ["=HYPERLINK(1)", "+cmd", "@x", "-1", "\tTab", "plain"]
    assert back[0].flagged == 1 and back[0].label == 1 and back[0].image == "/x/=a.nii.gz"
    assert back[1].flagged is None and back[1].score == pytest.approx(-0.25)


def test_reader_refuses_another_layout(tmp_path: Path) -> None:
    (tmp_path / "scores.csv").write_text("case,score,is_ood\na,1,0\n")
    with pytest.raises(rf.DataError, match="flagged"):
        rf.read_score_rows(tmp_path / "scores.csv")
    assert rf.read_score_rows(tmp_path / "scores.csv", require_flagged=False)[0].score == 1.0


def test_run_ownership_modes_and_stale_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = rf.RunFolder(out, {"a": 1}).start()
    (out / rf.map_file("c1")).write_bytes(b"x")
    first.finish(["c1"])
    manifest = rf.read_manifest(out)
    assert manifest and manifest["cases"] == ["c1"] and manifest["status"] == "complete" and manifest["ended"]
    assert {"torch", "monai", "python"} <= set(manifest["versions"]) and manifest["config"] == {"a": 1}
    first.start().finish(["c1"])  # the same run started again (a second engine pass): its own folder, same id
    assert rf.read_manifest(out)["run_id"] == manifest["run_id"]
    stale = out / ".c2_anomaly_map.nii.gz.k3j2.tmp.nii.gz"
    stale.write_bytes(b"partial")
    with pytest.raises(rf.RunFolderError, match=r"--resume .* --overwrite"):
        rf.RunFolder(out, {"a": 1}).start()
    assert not stale.exists(), "stale temporaries are removed on start, whatever the mode"
    with pytest.raises(rf.RunFolderError, match="another configuration"):
        rf.RunFolder(out, {"a": 2}, mode="resume").start()
    resumed = rf.RunFolder(out, {"a": 1}, mode="resume").start()
    assert resumed.previous_cases == ["c1"] and (out / rf.map_file("c1")).is_file()
    (out / "notes.txt").write_text("the user's")
    rf.RunFolder(out, {"a": 2}, mode="overwrite").start()
    assert not (out / rf.map_file("c1")).exists() and (out / "notes.txt").is_file()


# ---------------------------------------------------------------------------------------------- kill -9 mid-write
CHILD = r"""
import os, sys, time
from pathlib import Path
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
import medood.handlers.writers as writers
from medood.engines import OODEvaluator
from medood.handlers import OODResultWriter
from medood.inferers import OODInferer

data, out, mode, hang = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
if hang:  # the 2nd map: half a file in the temporary, then hang until killed
    real, calls = writers.nib.save, []
    def save(img, path):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"\x1f\x8b partial")
            Path(out + ".ready").write_text(str(path))
            time.sleep(600)
        real(img, path)
    writers.nib.save = save

class Net(torch.nn.Module):
    def forward(self, x):
        return x.abs()

files = sorted(str(p) for p in Path(data).glob("*.nii.gz"))
pre = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])
loader = DataLoader(Dataset([{"image": f} for f in files], pre), batch_size=1)
OODEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=Net(), inferer=OODInferer(slice_axes=[2]),
             val_handlers=[OODResultWriter(out, score_threshold=1.0, run_mode=mode)]).run()
"""


def _child(tmp: Path, data: Path, out: Path, mode: str, hang: bool) -> subprocess.Popen:
    script = tmp / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(data), str(out), mode, "1" if hang else "0"], env=env)


def _outputs(out: Path) -> dict[str, object]:
    got: dict[str, object] = {}
    for p in sorted(out.iterdir()):
        if p.name.endswith(".nii.gz"):
            got[p.name] = np.asarray(nib.load(p).dataobj).tobytes()
        elif p.name != rf.RUN_MANIFEST:
            got[p.name] = p.read_bytes()
    return got


@pytest.mark.slow
def test_kill_9_mid_write_then_rerun_gives_the_uninterrupted_outputs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        nib.save(nib.Nifti1Image(rng.random((6, 5, 4)).astype(np.float32), np.eye(4)), data / f"case{i}.nii.gz")
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert _child(tmp_path, data, clean, "new", hang=False).wait(300) == 0

    proc = _child(tmp_path, data, killed, "new", hang=True)
    ready = Path(str(killed) + ".ready")
    deadline = time.time() + 300
    while not ready.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert ready.is_file(), "the child never reached the second map write"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(60)
    temporaries = [p.name for p in killed.iterdir() if ".tmp" in p.name]
    assert temporaries, "the kill happened mid-write: a temporary file was left"
    assert not (killed / rf.SCORES_CSV).exists()
    assert json.loads((killed / rf.RUN_MANIFEST).read_text())["status"] == "running"

    assert _child(tmp_path, data, killed, "resume", hang=False).wait(300) == 0
    assert not [p.name for p in killed.iterdir() if ".tmp" in p.name], "no temporary survives the rerun"
    assert _outputs(killed) == _outputs(clean)
    assert json.loads((killed / rf.RUN_MANIFEST).read_text())["cases"] == ["case0", "case1", "case2"]
