"""The MONAI Label server with the doors opened on purpose: ``--allow-upload``, a token, one CORS origin (slow).

Uploads land inside the studies folder; traversal, overwrite and oversize uploads are still refused; deletes stay
off; every request needs the token; only the one allowed origin gets CORS headers, never with credentials.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.monailabel._server import AFFINE, BUNDLE, label_server, snapshot, write_study

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("monailabel") is None,
        reason="MONAI Label is not installed (scripts/install_monailabel.sh VENV installs the extra)",
    ),
]

TOKEN = "medood-test-token-0123456789"
ORIGIN = "http://127.0.0.1:3000"
LIMIT_MB = 0.25  # the uploads below: a 12 KiB volume passes, 400 KiB does not


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    top = tmp_path_factory.mktemp("label_upload")
    studies = top / "studies"
    studies.mkdir()
    write_study(studies / "case1.nii.gz")
    extra = ["--allow-upload", "--cors-origin", ORIGIN, "--max-upload-mb", str(LIMIT_MB)]
    with label_server(studies, extra, env={"MEDOOD_LABEL_TOKEN": TOKEN}) as url:
        yield url, studies


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _nifti_bytes(shape: tuple[int, int, int]) -> bytes:
    img = nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32), AFFINE)
    return img.to_bytes()


def test_every_request_needs_the_token(server) -> None:
    import requests

    url, studies = server
    before = snapshot(studies, studies.parent)
    assert requests.get(f"{url}/info/", timeout=30).status_code == 401
    assert requests.get(f"{url}/info/", headers=_auth("wrong-token-wrong-token"), timeout=30).status_code == 401
    r = requests.post(f"{url}/infer/{BUNDLE}", params={"image": "case1"}, timeout=30)
    assert r.status_code == 401 and "token" in r.json()["detail"]
    assert requests.get(f"{url}/info/", headers=_auth(), timeout=30).json()["models"][BUNDLE]
    # MONAI Label's login protocol (what Slicer's MONAILabel module does): the token is the password
    assert requests.get(f"{url}/auth/", timeout=30).json()["enabled"] is True
    bad = requests.post(f"{url}/auth/token", data={"username": "u", "password": "nope"}, timeout=30)
    assert bad.status_code == 401
    good = requests.post(f"{url}/auth/token", data={"username": "u", "password": TOKEN}, timeout=30).json()
    assert good == {"access_token": TOKEN, "token_type": "Bearer"}
    from monailabel.client import MONAILabelClient

    client = MONAILabelClient(url)
    client.update_auth(client.auth_token("radiologist", TOKEN))
    assert BUNDLE in client.info()["models"]
    assert snapshot(studies, studies.parent) == before


def test_a_valid_upload_lands_inside_the_studies_folder(server) -> None:
    import requests

    url, studies = server
    data = _nifti_bytes((12, 14, 16))
    r = requests.put(
        f"{url}/datastore/image", params={"image": "new_case"}, files={"file": ("x.nii.gz", data)}, headers=_auth()
    )
    assert r.status_code == 200 and r.json() == {"image": "new_case"}, r.text[:300]
    assert (studies / "new_case.nii.gz").read_bytes() == data
    listed = requests.get(f"{url}/datastore/", params={"output": "all"}, headers=_auth(), timeout=30).json()
    assert "new_case" in listed["objects"]
    r = requests.put(
        f"{url}/datastore/image", params={"image": "new_case"}, files={"file": ("x.nii.gz", data)}, headers=_auth()
    )
    assert r.status_code == 409 and "never replace" in r.json()["detail"]
    assert (studies / "new_case.nii.gz").read_bytes() == data


@pytest.mark.parametrize(
    ("query", "filename", "status", "reason"),
    [
        ({"image": "../../evilupload"}, "x.nii.gz", 400, "not a plain name"),
        ({"image": "/tmp/evilupload"}, "x.nii.gz", 400, "not a plain name"),
        ({"image": "..\\evilupload"}, "x.nii.gz", 400, "not a plain name"),
        ({"image": ".hidden"}, "x.nii.gz", 400, "not a plain name"),
        ({}, "../../evilupload.nii.gz", 200, ""),  # the file name's folders are dropped: lands as evilupload
        ({"image": "case1"}, "x.nii.gz", 409, "never replace"),
        ({"image": "script"}, "x.py", 400, "not a NIfTI volume"),
    ],
)
def test_uploads_are_confined_and_checked(server, query, filename, status, reason) -> None:
    import requests

    url, studies = server
    before = snapshot(studies.parent)
    r = requests.put(
        f"{url}/datastore/image", params=query, files={"file": (filename, _nifti_bytes((4, 4, 4)))}, headers=_auth()
    )
    assert r.status_code == status and reason in r.text, r.text[:300]
    outside = {k: v for k, v in snapshot(studies.parent).items() if not Path(k).is_relative_to(studies)}
    assert outside == {k: v for k, v in before.items() if not Path(k).is_relative_to(studies)}
    assert not list(studies.parent.parent.glob("evilupload*")) and not list(studies.parent.glob("evilupload*"))
    if status != 200:
        assert snapshot(studies.parent) == before
    else:
        assert (studies / "evilupload.nii.gz").is_file()


def test_oversize_uploads_labels_and_deletes(server) -> None:
    import requests

    url, studies = server
    before = snapshot(studies, studies.parent)
    big = io.BytesIO(_nifti_bytes((40, 50, 50)))  # 400 KB > 0.25 MiB
    r = requests.put(
        f"{url}/datastore/image", params={"image": "big"}, files={"file": ("big.nii.gz", big)}, headers=_auth()
    )
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = requests.put(f"{url}/session/", files={"files": ("big.nii.gz", big.getvalue())}, headers=_auth())
    assert r.status_code == 413
    label = {"label": ("l.nii.gz", _nifti_bytes((4, 4, 4)))}
    r = requests.put(
        f"{url}/datastore/label", params={"image": "case1", "tag": "../../x"}, files=label, headers=_auth()
    )
    assert r.status_code == 400 and "not a plain name" in r.json()["detail"]
    r = requests.put(
        f"{url}/datastore/label", params={"image": "case1", "tag": "original"}, files=label, headers=_auth()
    )
    assert r.status_code == 400 and "'final' only" in r.json()["detail"]
    r = requests.put(f"{url}/datastore/label", params={"image": "nope"}, files=label, headers=_auth())
    assert r.status_code == 404
    r = requests.delete(f"{url}/datastore/image", params={"id": "case1"}, headers=_auth(), timeout=30)
    assert r.status_code == 403 and "never allowed" in r.json()["detail"]
    assert snapshot(studies, studies.parent) == before
    r = requests.put(f"{url}/datastore/label", params={"image": "case1"}, files=label, headers=_auth())
    assert r.status_code == 200 and (studies / "labels" / "final" / "case1.nii.gz").is_file()


def test_only_the_allowed_origin_gets_cors_headers_without_credentials(server) -> None:
    import requests

    url, _ = server
    r = requests.get(f"{url}/info/", headers={"Origin": ORIGIN, **_auth()}, timeout=30)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-credentials" not in r.headers
    pre = requests.options(
        f"{url}/infer/{BUNDLE}",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=30,
    )
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-credentials" not in pre.headers
    for origin in ("http://evil.example", "http://127.0.0.1:3001", "null"):
        r = requests.get(f"{url}/info/", headers={"Origin": origin, **_auth()}, timeout=30)
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
