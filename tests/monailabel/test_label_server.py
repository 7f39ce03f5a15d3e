"""The real MONAI Label server on loopback: one inference request on a small synthetic volume (slow)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email.parser import BytesParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("monailabel") is None,
        reason="MONAI Label is not installed (scripts/install_monailabel.sh VENV installs the extra)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = "mim_brain_mri_anomaly_segmentation"
AFFINE = np.array([[-4.0, 0, 0, 80], [0, 4.0, 0, -90], [0, 0, 4.0, -70], [0, 0, 0, 1]])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, params: dict) -> tuple[int, str, bytes]:
    boundary = "medoodtestboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{json.dumps(params)}\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def _parts(content_type: str, body: bytes) -> dict[str, bytes]:
    msg = BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in msg.walk()
        if part.get_param("name", header="content-disposition")
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    studies = tmp_path_factory.mktemp("studies")
    rng = np.random.default_rng(0)
    vol = np.zeros((40, 48, 36), np.float32)
    vol[8:32, 8:40, 6:30] = 100 + 10 * rng.random((24, 32, 24))
    vol[18:22, 20:24, 16:20] = 300  # a bright blob
    nib.save(nib.Nifti1Image(vol, AFFINE), str(studies / "case1.nii.gz"))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = (studies.parent / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medood.cli",
            "label",
            "serve",
            "--studies",
            str(studies),
            "--bundle",
            BUNDLE,
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(studies.parent),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"server exited: {(studies.parent / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/info/", timeout=5) as r:
                    info = json.loads(r.read())
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        else:
            pytest.fail("server did not answer within 120 s")
        yield url, studies, info
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_info_names_the_bundle_and_the_calibrated_threshold(server) -> None:
    _, _, info = server
    model = info["models"][BUNDLE]
    meta = json.loads((ROOT / "bundles" / BUNDLE / "configs" / "metadata.json").read_text())
    p995 = meta["training"]["weights"]["model.pt"]["healthy_map_value_percentiles"]["p99.5"]
    assert model["type"] == "segmentation" and model["labels"] == {"anomaly": 1}
    assert model["config"]["threshold"] == pytest.approx(p995, rel=1e-4)


def test_inference_returns_mask_scores_and_saves_the_map(server) -> None:
    url, studies, _ = server
    status, ctype, body = _post(
        f"{url}/infer/{BUNDLE}?image=case1&output=all",
        {"threshold": 0.3, "result_extension": ".nii.gz", "result_dtype": "uint8"},
    )
    assert status == 200, body[:500]
    parts = _parts(ctype, body)
    params = json.loads(parts["params"])
    assert params["threshold"] == 0.3 and params["threshold_source"] == "request"
    assert np.isfinite(params["volume_score"]) and len(params["slice_scores"]["2"]) == 36
    saved = studies / "anomaly_maps" / "case1_anomaly_map.nii.gz"
    assert Path(params["anomaly_map"]) == saved and saved.is_file()
    amap = nib.load(str(saved))
    assert amap.get_data_dtype() == np.float32 and amap.shape == (40, 48, 36)
    np.testing.assert_allclose(amap.affine, AFFINE, atol=1e-4)
    label_file = studies.parent / "label.nii.gz"
    label_file.write_bytes(parts["image"])
    label = nib.load(str(label_file))
    mask = np.asarray(label.dataobj)
    assert label.shape == (40, 48, 36) and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_allclose(label.affine, AFFINE, atol=1e-4)
    expected = np.asarray(amap.dataobj) >= 0.3
    assert mask.sum() == params["anomalous_voxels"] and np.array_equal(mask.astype(bool), expected)


def test_requests_outside_the_studies_are_refused(server) -> None:
    url, studies, _ = server
    before = sorted(p.name for p in studies.rglob("*"))
    for image in ("../server.log", "/etc/passwd", "nope"):
        status, _, body = _post(f"{url}/infer/{BUNDLE}?image={urllib.request.quote(image, safe='')}&output=json", {})
        assert status == 400, (image, status, body[:300])
    assert sorted(p.name for p in studies.rglob("*")) == before
