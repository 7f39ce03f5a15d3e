"""The real MONAI Label server on loopback, as started by default (locked down): inference, attacks, sessions (slow).

One server for the module. Every refused request is checked for its status and reason AND for having written or
deleted nothing in the studies folder or its parent.
"""

from __future__ import annotations

import importlib.util
import json
import time
from email.parser import BytesParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medood.detectors.calibration import Calibration
from tests.monailabel._server import AFFINE, BUNDLE, ROOT, XFORM_CODE, label_server, snapshot, write_study

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("monailabel") is None,
        reason="MONAI Label is not installed (scripts/install_monailabel.sh VENV installs the extra)",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    import requests

    top = tmp_path_factory.mktemp("label_default")
    studies = top / "studies"
    studies.mkdir()
    write_study(studies / "case1.nii.gz")
    write_study(top / "outside.nii.gz", seed=1)  # a scan beside the studies folder: never to be served or touched
    with label_server(studies) as url:
        info = requests.get(f"{url}/info/", timeout=30).json()
        yield url, studies, info
    store = info.get("_session_store")
    assert store is None or not Path(store).exists(), "stopping the server removes its session store"


def _infer(url: str, image: str = "case1", params: object = None, output: str = "json", **query: str):
    import requests

    raw = params if isinstance(params, str) else json.dumps(params or {})
    q = {"image": image, "output": output, **query}
    return requests.post(f"{url}/infer/{BUNDLE}", params=q, files={"params": (None, raw)}, timeout=300)


def _parts(response) -> dict[str, bytes]:
    head = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    msg = BytesParser().parsebytes(head + response.content)
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in msg.walk()
        if part.get_param("name", header="content-disposition")
    }


def test_info_names_the_bundle_and_the_calibrated_threshold(server) -> None:
    _, _, info = server
    model = info["models"][BUNDLE]
    state = torch.load(ROOT / "bundles" / BUNDLE / "models" / "model.pt", weights_only=True)["model"]
    calibration = Calibration()
    calibration.load_state_dict({k[len("calibration.") :]: v for k, v in state.items() if k.startswith("calibration.")})
    shipped = calibration.thresholds()
    assert model["type"] == "segmentation" and model["labels"] == {"anomaly": 1}
    assert model["config"]["threshold"] == pytest.approx(shipped.map, rel=1e-6), "the split-conformal map threshold"
    assert shipped.score is not None, "the shipped calibration holds enough healthy volumes for a 5 % flag"
    assert info["trainers"] == {} and info["scoring"] == {}


def test_inference_returns_mask_scores_and_saves_the_map_with_thresholds(server) -> None:
    url, studies, _ = server
    r = _infer(url, params={"threshold": 0.3, "result_extension": ".nii.gz", "result_dtype": "uint8"}, output="all")
    assert r.status_code == 200, r.text[:500]
    parts = _parts(r)
    result = json.loads(parts["params"])
    assert result["threshold"] == 0.3 and result["threshold_source"] == "request"
    assert np.isfinite(result["volume_score"]) and len(result["slice_scores"]["2"]) == 36
    # flagged: the bundle's stored calibration (split-conformal threshold of healthy scores), as in bundle runs
    assert isinstance(result["score_threshold"], float)
    assert result["flagged"] == (result["volume_score"] > result["score_threshold"])
    worst = result["worst_slices"]
    assert len(worst) == 5 and worst[0]["score"] == max(result["slice_scores"]["2"])
    assert [w["score"] for w in worst] == sorted((w["score"] for w in worst), reverse=True)
    saved = studies / "anomaly_maps" / "case1_anomaly_map.nii.gz"
    assert Path(result["anomaly_map"]) == saved and saved.is_file()
    thresholds = json.loads((studies / "anomaly_maps" / "thresholds.json").read_text())
    assert Path(result["thresholds_file"]) == studies / "anomaly_maps" / "thresholds.json"
    assert thresholds["window"] == result["window"] and thresholds["score_threshold"] == result["score_threshold"]
    assert thresholds["map_threshold"] == pytest.approx(server[2]["models"][BUNDLE]["config"]["threshold"])
    amap = nib.load(str(saved))
    assert amap.get_data_dtype() == np.float32 and amap.shape == (40, 48, 36)
    np.testing.assert_allclose(amap.affine, AFFINE, atol=1e-4)
    label_file = studies.parent / "label.nii.gz"
    label_file.write_bytes(parts["image"])
    label = nib.load(str(label_file))
    mask = np.asarray(label.dataobj)
    assert label.shape == (40, 48, 36) and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_allclose(label.affine, AFFINE, atol=1e-4)
    for img in (amap, label):  # the input's qform / sform codes are kept
        assert int(img.header["qform_code"]) == XFORM_CODE and int(img.header["sform_code"]) == XFORM_CODE
    expected = np.asarray(amap.dataobj) >= 0.3
    assert mask.sum() == result["anomalous_voxels"] and np.array_equal(mask.astype(bool), expected)


def test_float_map_on_request(server) -> None:
    url, studies, _ = server
    r = _infer(url, params={"anomaly_output": "map"}, output="image")
    assert r.status_code == 200, r.text[:300]
    path = studies.parent / "returned_map.nii.gz"
    path.write_bytes(r.content)
    returned, saved = nib.load(str(path)), nib.load(str(studies / "anomaly_maps" / "case1_anomaly_map.nii.gz"))
    assert returned.get_data_dtype() == np.float32 and int(returned.header["sform_code"]) == XFORM_CODE
    np.testing.assert_allclose(np.asarray(returned.dataobj), np.asarray(saved.dataobj), atol=1e-6)
    assert len(np.unique(np.asarray(returned.dataobj))) > 2, "a float map, not a labelmap"


ATTACKS = [
    # (method, path, query, body files, status, reason fragment)
    ("PUT", "/datastore/image", {"image": "../../evilupload"}, True, 403, "uploads are off"),
    ("PUT", "/datastore/image", {"image": "case1"}, True, 403, "uploads are off"),
    ("PUT", "/datastore/", {"image": "x"}, True, 403, "never allowed"),
    ("PUT", "/datastore/label", {"image": "case1", "tag": "final"}, True, 403, "uploads are off"),
    ("DELETE", "/datastore/image", {"id": "case1"}, False, 403, "never allowed"),
    ("DELETE", "/datastore/label", {"id": "case1", "tag": "final"}, False, 403, "never allowed"),
    ("POST", f"/train/{BUNDLE}", {}, False, 403, "disabled"),
    ("POST", "/scoring/dice", {}, False, 403, "disabled"),
    ("POST", "/batch/infer/x", {}, False, 403, "disabled"),
    ("GET", "/datastore/dataset", {}, False, 403, "never allowed"),
    ("GET", "/logs/", {}, False, 403, "disabled"),
    ("GET", f"/model/{BUNDLE}", {}, False, 403, "disabled"),
    ("POST", "/reload", {}, False, 403, "disabled"),
    ("GET", "/datastore/image", {"image": "../outside"}, False, 400, "not a plain name"),
    ("GET", "/datastore/label", {"label": "case1", "tag": "../../x"}, False, 400, "not a plain name"),
]


@pytest.mark.parametrize(("method", "path", "query", "upload", "status", "reason"), ATTACKS)
def test_writes_deletes_and_closed_routes_are_refused(server, method, path, query, upload, status, reason) -> None:
    import requests

    url, studies, _ = server
    before = snapshot(studies, studies.parent)
    files = {"file": ("evil.nii.gz", (studies.parent / "outside.nii.gz").read_bytes())} if upload else None
    if upload and "label" in path:
        files = {"label": ("evil.nii.gz", (studies.parent / "outside.nii.gz").read_bytes())}
    r = requests.request(method, f"{url}{path}", params=query, files=files, timeout=60)
    assert r.status_code == status and reason in r.json()["detail"], (r.status_code, r.text[:300])
    assert snapshot(studies, studies.parent) == before
    assert not list(studies.parent.parent.glob("evilupload*")) and not list(studies.parent.glob("evilupload*"))


def test_cross_origin_requests_are_refused_without_cors_headers(server) -> None:
    import requests

    url, studies, _ = server
    before = snapshot(studies, studies.parent)
    evil = {"Origin": "http://evil.example"}
    for r in (
        requests.get(f"{url}/datastore/", params={"output": "all"}, headers=evil, timeout=30),
        requests.options(
            f"{url}/datastore/image", headers={**evil, "Access-Control-Request-Method": "PUT"}, timeout=30
        ),
        _infer_with_headers(url, evil),
    ):
        assert r.status_code == 403 and "cross-origin" in r.json()["detail"], r.text[:200]
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-credentials" not in r.headers
    r = requests.get(f"{url}/info/", timeout=30)  # no Origin (Slicer, curl): no CORS headers either
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = requests.get(f"{url}/info/", headers={"Host": "evil.example"}, timeout=30)  # DNS rebinding
    assert r.status_code == 400 and "Host" in r.json()["detail"]
    assert snapshot(studies, studies.parent) == before


def _infer_with_headers(url: str, headers: dict[str, str]):
    import requests

    return requests.post(
        f"{url}/infer/{BUNDLE}", params={"image": "case1"}, files={"params": (None, "{}")}, headers=headers, timeout=60
    )


BAD_PARAMS = [
    ('{"threshold": "high"}', "threshold must be a number"),
    ('{"threshold": NaN}', "not a number"),
    ('{"threshold": "nan"}', "finite"),
    ('{"threshold": 1e309}', "finite"),
    ('{"threshold": "1e309"}', "finite"),
    ('{"threshold": [0.3]}', "threshold must be a number, got list"),
    ('{"threshold": true}', "threshold must be a number"),
    ('{"threshold": -1}', "outside the anomaly map's range"),
    ('{"threshold": ', "not valid JSON"),
    ("[0.3]", "must be a JSON object"),
    ('{"model_filename": "../../evil.pt"}', "fixed by the server"),
    ('{"device": "cuda:7"}', "fixed by the server"),
    ('{"save_label": true}', "unknown option"),
    ('{"image": "/etc/passwd"}', "unknown option"),
    ('{"sw_batch_size": 100000}', "unknown option"),
    ('{"result_extension": "/../x"}', "result_extension must be one of"),
    ('{"anomaly_output": "both"}', "anomaly_output must be one of"),
]


@pytest.mark.parametrize(("params", "reason"), BAD_PARAMS)
def test_malformed_parameters_are_400_before_any_inference(server, params, reason) -> None:
    url, studies, _ = server
    before = snapshot(studies, studies.parent)  # an inference would rewrite anomaly_maps/case1_anomaly_map.nii.gz
    r = _infer(url, params=params)
    assert r.status_code == 400 and reason in r.json()["detail"], (r.status_code, r.text[:300])
    assert snapshot(studies, studies.parent) == before


def test_bad_queries_and_unknown_model(server) -> None:
    import requests

    url, studies, _ = server
    before = snapshot(studies, studies.parent)
    r = requests.post(f"{url}/infer/no_such_model", params={"image": "case1"}, timeout=30)
    assert r.status_code == 404 and "unknown model" in r.json()["detail"] and BUNDLE in r.json()["detail"]
    r = _infer(url, output="xml")
    assert r.status_code == 400 and "output" in r.text
    for image in ("../outside", "/etc/passwd", "..", "nope", ""):
        r = _infer(url, image=image)
        assert r.status_code == 400, (image, r.status_code, r.text[:300])
    r = requests.post(
        f"{url}/infer/{BUNDLE}", params={"image": "case1"}, files={"file": ("x.nii.gz", b"x")}, timeout=30
    )
    assert r.status_code == 400 and "PUT /session/" in r.json()["detail"]
    assert _infer(url, session_id="no-such-session").status_code == 404
    assert snapshot(studies, studies.parent) == before


def test_slicer_session_route(server, tmp_path) -> None:
    import requests

    url, studies, info = server
    before = snapshot(studies, studies.parent)
    volume = write_study(tmp_path / "slicer_volume.nii.gz", seed=3)
    r = requests.put(f"{url}/session/", files={"files": (volume.name, volume.read_bytes())}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    session_id, session = r.json()["session_id"], r.json()["session_info"]
    store = Path(session["path"]).parent
    info["_session_store"] = str(store)  # the fixture checks that stopping the server removes it
    assert not Path(session["image"]).resolve().is_relative_to(studies.resolve())
    assert Path(session["image"]).is_file() and Path(session["image"]).name == volume.name
    r = _infer(url, image="3: T1/MPRAGE", output="json", session_id=session_id)  # Slicer's volume name: not read
    assert r.status_code == 200, r.text[:500]
    result = r.json()
    assert Path(result["anomaly_map"]).parent == Path(session["path"]) / "anomaly_maps"
    assert (Path(session["path"]) / "anomaly_maps" / "thresholds.json").is_file()
    assert np.isfinite(result["volume_score"]) and isinstance(result["flagged"], bool)
    assert snapshot(studies, studies.parent) == before, "the session volume and its map stay out of the studies"
    assert requests.get(f"{url}/session/{session_id}", timeout=30).status_code == 200
    assert requests.delete(f"{url}/session/{session_id}", timeout=30).status_code == 200
    assert not Path(session["path"]).exists()
    assert _infer(url, image="x", session_id=session_id).status_code == 404
    # expiry: a session of 1 s is cleaned when the next one is created
    r = requests.put(f"{url}/session/", params={"expiry": 1}, files={"files": (volume.name, volume.read_bytes())})
    short = r.json()
    time.sleep(2.5)
    r = requests.put(f"{url}/session/", files={"files": (volume.name, volume.read_bytes())}, timeout=60)
    assert r.status_code == 200
    assert not Path(short["session_info"]["path"]).exists()
    assert requests.get(f"{url}/session/{short['session_id']}", timeout=30).status_code == 404
    for files, query, reason in [
        ({"files": ("notes.txt", b"hello")}, {}, "not a NIfTI volume"),
        ({"files": (volume.name, volume.read_bytes())}, {"uncompress": "true"}, "archives are not accepted"),
        ({"files": (volume.name, volume.read_bytes())}, {"expiry": "-5"}, "expiry"),
    ]:
        r = requests.put(f"{url}/session/", params=query, files=files, timeout=60)
        assert r.status_code == 400 and reason in r.json()["detail"], r.text[:300]
    assert snapshot(studies, studies.parent) == before


def test_slicer_snippet_shows_the_map_at_the_calibrated_window_with_scores(server, tmp_path, capsys) -> None:
    """The snippet of the docs, run against the server with MONAI Label's client and a recording ``slicer``."""
    import shutil
    import sys
    import types

    import monailabel.client

    from medood.monailabel.slicer_snippet import SLICER_SNIPPET

    url, studies, _ = server
    calls: list[tuple] = []

    class Display:
        def __getattr__(self, name):
            return lambda *a: calls.append((name, *a))

    def load_volume(path, properties=None):
        calls.append(("loadVolume", nib.load(path), dict(properties or {})))
        return types.SimpleNamespace(GetDisplayNode=Display)

    def save_node(volume, path):  # Slicer writes the volume open in the scene
        shutil.copy(volume, path)

    slicer = types.ModuleType("slicer")
    slicer.app = types.SimpleNamespace(temporaryPath=str(tmp_path))
    slicer.util = types.SimpleNamespace(
        loadVolume=load_volume, saveNode=save_node, setSliceViewerLayers=lambda **kw: calls.append(("layers", kw))
    )
    saved = {name: sys.modules.get(name) for name in ("slicer", "MONAILabelLib")}
    sys.modules["slicer"], sys.modules["MONAILabelLib"] = slicer, monailabel.client
    try:
        scope: dict = {"__name__": "__main__"}
        exec(compile(SLICER_SNIPPET, "snippet.py", "exec"), scope)
        _, result = scope["show_anomaly"](url, BUNDLE, "case1")
        session_id = scope["send_volume"](url, str(studies / "case1.nii.gz"))
        _, session_result = scope["show_anomaly"](url, BUNDLE, "Slicer volume", session_id=session_id)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    thresholds = json.loads((studies / "anomaly_maps" / "thresholds.json").read_text())
    loaded = [c for c in calls if c[0] == "loadVolume"]
    assert len(loaded) == 2 and loaded[0][2] == {"labelmap": False, "name": "case1 anomaly map"}
    shown = np.asarray(loaded[0][1].dataobj)
    expected = np.asarray(nib.load(str(studies / "anomaly_maps" / "case1_anomaly_map.nii.gz")).dataobj)
    assert shown.dtype == np.float32 and np.allclose(shown, expected, atol=1e-6)
    assert ("SetWindowLevelMinMax", *thresholds["window"]) in calls
    assert ("SetLowerThreshold", thresholds["window"][0]) in calls and ("SetAutoWindowLevel", 0) in calls
    assert result["window"] == thresholds["window"] and session_result["volume_score"] == result["volume_score"]
    out = capsys.readouterr().out
    assert f"volume score {result['volume_score']}, flagged {result['flagged']}" in out
    worst = result["worst_slices"][0]
    assert f"index {worst['slice']}, score {worst['score']:.4g}" in out
    assert not Path(session_result["anomaly_map"]).is_relative_to(studies)


def test_the_docs_quote_the_snippet() -> None:
    from medood.monailabel.slicer_snippet import SLICER_SNIPPET

    assert SLICER_SNIPPET.strip() in (ROOT / "docs" / "monailabel_slicer.md").read_text()


def test_next_sample_is_checked(server) -> None:
    import requests

    url, studies, _ = server
    r = requests.post(f"{url}/activelearning/random", json={"client_id": "slicer-user"}, timeout=30)
    assert r.status_code == 200 and r.json()["id"] == "case1", r.text[:300]
    assert Path(r.json()["path"]).resolve() == (studies / "case1.nii.gz").resolve()
    before = snapshot(studies, studies.parent)
    for body, status, reason in [
        ({"client_id": "u", "strategy": "x"}, 400, "unknown option"),
        ({"client_id": ["u"]}, 400, "client_id"),
        ("[1]", 400, "JSON object"),
    ]:
        data = body if isinstance(body, str) else json.dumps(body)
        r = requests.post(f"{url}/activelearning/random", data=data, timeout=30)
        assert r.status_code == status and reason in r.json()["detail"], r.text[:300]
    assert requests.post(f"{url}/activelearning/nope", json={}, timeout=30).status_code == 404
    assert snapshot(studies, studies.parent) == before
