"""The server's rules without a server: names, thresholds, options, routes, origins, tokens, hosts."""

from __future__ import annotations

import pytest

from medood.monailabel.policy import (
    LOOPBACK_HOSTS,
    RequestRefused,
    ServerPolicy,
    check_infer_params,
    check_name,
    check_threshold,
    confined,
    study_extension,
)

OPTIONS = {"device": ["cpu"], "model_filename": ["model.pt"], "threshold": 0.2}


def _refused(fn, *args, status: int = 400, match: str = "") -> str:
    with pytest.raises(RequestRefused) as e:
        fn(*args)
    assert e.value.status == status and match in e.value.reason, e.value.reason
    return e.value.reason


@pytest.mark.parametrize(
    "name", ["../../evilupload", "/etc/passwd", "..", ".", "a/b", "a\\b", ".hidden", "c:x", "a\x00b", "", "x" * 256]
)
def test_names_that_are_paths_are_refused(name) -> None:
    _refused(check_name, name)


def test_plain_names_pass_and_paths_stay_confined(tmp_path) -> None:
    assert check_name("sub-052_T1w") == "sub-052_T1w" and check_name("case 1 (b)") == "case 1 (b)"
    (tmp_path / "in").mkdir()
    assert confined(tmp_path / "in" / "x.nii.gz", tmp_path / "in") == (tmp_path / "in" / "x.nii.gz").resolve()
    _refused(confined, tmp_path / "in" / ".." / "x", tmp_path / "in", match="outside")
    (tmp_path / "in" / "link").symlink_to(tmp_path)
    _refused(confined, tmp_path / "in" / "link" / "x", tmp_path / "in", match="outside")
    assert study_extension("a.NII.GZ") == ".nii.gz" and study_extension("b.nii") == ".nii"
    for bad in ("a.py", ".nii.gz", None, "a.nii.gz.exe"):
        _refused(study_extension, bad, match="not a NIfTI")


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("high", "number"),
        (float("nan"), "finite"),
        ("nan", "finite"),
        (float("inf"), "finite"),
        ("1e309", "finite"),
        ([0.3], "got list"),
        (True, "got bool"),
        (None, "got NoneType"),
        (-1, "range >= 0"),
        (-1e-9, "range"),
    ],
)
def test_bad_thresholds(value, match) -> None:
    _refused(check_threshold, value, match=match)


def test_thresholds_in_range() -> None:
    assert check_threshold("0.25") == 0.25 and check_threshold(3) == 3.0 and check_threshold(0) == 0.0
    assert check_threshold(0.5, [0, 1]) == 0.5
    _refused(check_threshold, 1.5, [0, 1], match="[0, 1]")


def test_infer_params() -> None:
    slicer = '{"device": "cpu", "model_filename": "model.pt", "threshold": 0.3, "client_id": "user-xyz"}'
    assert check_infer_params(slicer, OPTIONS) == {"threshold": 0.3, "client_id": "user-xyz"}
    assert check_infer_params('{"client_id": null}', OPTIONS) == {"client_id": None}  # MONAI Label's client
    assert check_infer_params("", OPTIONS) == {} and check_infer_params('{"threshold": ""}', OPTIONS) == {}
    assert check_infer_params('{"anomaly_output": "map", "result_compress": false}', OPTIONS) == {
        "anomaly_output": "map",
        "result_compress": False,
    }
    for raw, match in [
        ('{"threshold": NaN}', "not valid JSON"),
        ('{"threshold": Infinity}', "not valid JSON"),
        ('{"threshold": 1e309}', "finite"),
        ("{", "not valid JSON"),
        ('"x"', "JSON object"),
        ('{"model_filename": "../../x.pt"}', "fixed by the server"),
        ('{"device": "cuda"}', "fixed by the server"),
        ('{"save_label": true}', "unknown option"),
        ('{"logging": "NOPE"}', "unknown option"),
        ('{"result_compress": 1}', "result_compress must be one of"),
        ('{"result_dtype": "object"}', "result_dtype must be one of"),
        ('{"client_id": ["a"]}', "client_id"),
    ]:
        _refused(check_infer_params, raw, OPTIONS, match=match)


def test_routes_by_default_and_with_uploads() -> None:
    locked, open_ = ServerPolicy(), ServerPolicy(allow_upload=True)
    for method, path in [
        ("GET", "/info/"),
        ("POST", "/infer/m"),
        ("PUT", "/session/"),
        ("DELETE", "/session/abc"),
        ("GET", "/datastore/image"),
        ("HEAD", "/datastore/image"),
        ("POST", "/activelearning/random"),
    ]:
        locked.check_route(method, path)
    for method, path, match in [
        ("PUT", "/datastore/image", "--allow-upload"),
        ("PUT", "/datastore/label", "--allow-upload"),
        ("DELETE", "/datastore/image", "never"),
        ("PUT", "/datastore/", "never"),
        ("POST", "/train/m", "disabled"),
        ("DELETE", "/train/", "never"),
        ("GET", "/logs/", "disabled"),
        ("POST", "/infer/wsi/m", "disabled"),
        ("OPTIONS", "/info/", "disabled"),
    ]:
        _refused(locked.check_route, method, path, status=403, match=match)
    open_.check_route("PUT", "/datastore/image")
    _refused(open_.check_route, "DELETE", "/datastore/image", status=403, match="never")
    _refused(locked.check_names, {"image": ["case1"], "tag": ["../x"]}, match="tag")
    locked.check_names({"image": ["case1"], "output": ["../x"]})  # not a name parameter
    locked.check_names({"image": ["3: T1/MPRAGE"], "session_id": ["abc"]})  # Slicer's volume name, not read
    _refused(locked.check_names, {"image": ["x"], "session_id": ["../abc"]}, match="session_id")


def test_origins_tokens_and_hosts() -> None:
    p = ServerPolicy(cors_origin="http://127.0.0.1:3000", token="t" * 20, trusted_hosts=LOOPBACK_HOSTS)
    p.check_origin(None)
    p.check_origin("http://127.0.0.1:3000")
    for origin in ("http://evil.example", "null", "http://127.0.0.1:3000.evil.example"):
        _refused(p.check_origin, origin, status=403, match="cross-origin")
    _refused(ServerPolicy().check_origin, "http://127.0.0.1:8000", status=403)
    p.check_token("GET", "/info/", "Bearer " + "t" * 20)
    p.check_token("GET", "/auth/", None)
    for header in (None, "t" * 20, "Basic " + "t" * 20, "Bearer " + "t" * 19, "Bearer "):
        _refused(p.check_token, "GET", "/info/", header, status=401)
    ServerPolicy().check_token("GET", "/info/", None)
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000", "LOCALHOST:1"):
        p.check_host(host)
    for host in ("evil.example:8000", None, "127.0.0.1.evil.example"):
        _refused(p.check_host, host, match="Host")
    ServerPolicy().check_host("any.example")
    for bad in (
        {"cors_origin": "*"},
        {"cors_origin": "http://a.example/path"},
        {"token": "short"},
        {"max_upload_bytes": 0},
    ):
        with pytest.raises(ValueError):
            ServerPolicy(**bad)
