"""What the MONAI Label server of ``medood label serve`` allows: routes, names, origins, tokens and request options.

Pure Python (no MONAI Label import), so every rule is unit-tested without a server; :mod:`medood.monailabel.http`
applies them to MONAI Label's FastAPI app. The model is deny-by-default:

* **read and infer** routes are open (server info, study listing and download, next sample, inference, Slicer's
  session route); every other route of MONAI Label (training, scoring, batch inference, logs, model download,
  dataset archive, OHIF / DICOMweb proxy, reload) is refused with 403;
* **uploads** (``PUT /datastore/image``, ``PUT /datastore/label``) only with ``--allow-upload``; deleting studies
  or labels is never allowed;
* every name a request carries (``image``, ``label``, ``tag``, ``id``, ``session_id``) is a plain file name: no
  path separator, no ``..``, no leading dot, no absolute path, no control character;
* cross-origin requests are refused unless their ``Origin`` is the one ``--cors-origin``;
* with a token (``--token`` / ``MEDOOD_LABEL_TOKEN``) every request but ``GET /auth/`` and ``POST /auth/token``
  must carry ``Authorization: Bearer <token>``;
* inference options are an allow-list, each value checked (:func:`check_infer_params`) before anything runs.
"""

from __future__ import annotations

import hmac
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LOOPBACK_HOSTS",
    "NAME_PARAMS",
    "RESULT_DTYPES",
    "RESULT_EXTENSIONS",
    "STUDY_EXTENSIONS",
    "RequestRefused",
    "ServerPolicy",
    "check_infer_params",
    "check_name",
    "check_threshold",
    "confined",
    "parse_json_object",
    "study_extension",
]

#: Host names that only this machine can reach.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

#: Query parameters that name a study, label, tag or session (each must pass :func:`check_name`).
NAME_PARAMS = ("image", "label", "tag", "id", "session_id")

#: File types a study / session volume / label may have.
STUDY_EXTENSIONS = (".nii.gz", ".nii")

#: ``result_extension`` / ``result_dtype`` values a request may ask for.
RESULT_EXTENSIONS = (".nii.gz", ".nii")
RESULT_DTYPES = ("uint8", "uint16", "int16", "float32")

#: What each inference option may hold, besides the server's own option values (:func:`check_infer_params`).
_FREE_OPTIONS = {"client_id", "threshold", "result_extension", "result_dtype", "result_compress", "anomaly_output"}

#: ``anomaly_output``: the image an inference returns (``mask``: the labelmap; ``map``: the float32 map).
ANOMALY_OUTPUTS = ("mask", "map")

#: Options whose value is one of a fixed list.
_CHOICES: dict[str, tuple[Any, ...]] = {
    "result_extension": RESULT_EXTENSIONS,
    "result_dtype": RESULT_DTYPES,
    "result_compress": (True, False),
    "anomaly_output": ANOMALY_OUTPUTS,
}

#: (method, path pattern) of the routes open on every server.
_OPEN_ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", r"/"),
    ("GET", r"/docs"),
    ("GET", r"/openapi\.json"),
    ("GET", r"/favicon\.ico"),
    ("GET", r"/static/[^?]*"),
    ("GET", r"/info/?"),
    ("GET", r"/auth/?"),
    ("POST", r"/auth/token"),
    ("GET", r"/datastore/?"),
    ("GET", r"/datastore/image"),
    ("HEAD", r"/datastore/image"),
    ("GET", r"/datastore/image/info"),
    ("GET", r"/datastore/label"),
    ("HEAD", r"/datastore/label"),
    ("GET", r"/datastore/label/info"),
    ("POST", r"/activelearning/[^/]+"),
    ("POST", r"/infer/[^/]+"),
    ("PUT", r"/session/?"),
    ("GET", r"/session/[^/]+"),
    ("DELETE", r"/session/[^/]+"),
)
#: Routes open only with ``--allow-upload``.
_UPLOAD_ROUTES: tuple[tuple[str, str], ...] = (("PUT", r"/datastore/image"), ("PUT", r"/datastore/label"))
#: Routes that never need a token (MONAI Label clients ask them whether and how to log in).
_LOGIN_ROUTES: tuple[tuple[str, str], ...] = (("GET", r"/auth/?"), ("POST", r"/auth/token"))


class RequestRefused(Exception):
    """A request the server refuses: HTTP ``status`` and a one-line ``reason`` (sent to the client)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _match(routes: Sequence[tuple[str, str]], method: str, path: str) -> bool:
    return any(method == m and re.fullmatch(p, path) for m, p in routes)


def check_name(value: str, what: str = "name") -> str:
    r"""Return ``value`` if it is a plain file name; raise :class:`RequestRefused` (400) otherwise.

    A plain name is 1-255 characters, with no ``/``, ``\\``, ``:``, control character or leading dot (so
    neither ``.`` / ``..`` nor a hidden file), and is not an absolute path.
    """
    if not isinstance(value, str) or not value:
        raise RequestRefused(400, f"{what} must be a non-empty name")
    if len(value) > 255:
        raise RequestRefused(400, f"{what} is longer than 255 characters")
    bad = [c for c in value if c in "/\\:" or ord(c) < 32 or ord(c) == 127]
    if bad or value.startswith(".") or Path(value).is_absolute():
        raise RequestRefused(
            400, f"{what} {value[:80]!r} is not a plain name (no path separators, '..', leading dot or absolute path)"
        )
    return value


def confined(path: str | Path, root: str | Path) -> Path:
    """``path`` resolved (links followed), if it lies inside ``root`` (resolved); 400 otherwise."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise RequestRefused(400, f"{Path(path).name!r} resolves outside the folder it must stay in: refused")
    return resolved


def study_extension(filename: str | None) -> str:
    """The study extension (:data:`STUDY_EXTENSIONS`) ``filename`` ends with; 400 when it has none of them."""
    name = (filename or "").lower()
    for ext in STUDY_EXTENSIONS:
        if name.endswith(ext) and len(name) > len(ext):
            return ext
    raise RequestRefused(400, f"file {str(filename)[:80]!r} is not a NIfTI volume ({', '.join(STUDY_EXTENSIONS)})")


def check_threshold(value: Any, value_range: Sequence[float] | None = None) -> float:
    """A request's mask threshold as a float: a finite, non-negative number inside the map's ``value_range``.

    Accepts a JSON number or a string holding one (Slicer's option table may send either). Raises
    :class:`RequestRefused` (400) for anything else: booleans, lists, ``nan``, ``inf``, ``1e309``, ``-1``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestRefused(400, f"threshold must be a number, got {type(value).__name__}")
    try:
        t = float(value)
    except ValueError:
        raise RequestRefused(400, f"threshold must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(t):
        raise RequestRefused(400, f"threshold must be a finite number, got {str(value)[:40]!r}")
    lo, hi = (float(value_range[0]), float(value_range[1])) if value_range and len(value_range) == 2 else (0.0, None)
    lo = max(lo, 0.0)
    if t < lo or (hi is not None and t > hi):
        span = f"[{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
        raise RequestRefused(400, f"threshold {t:g} is outside the anomaly map's range {span}")
    return t


def check_infer_params(
    raw: str | None, options: Mapping[str, Any], value_range: Sequence[float] | None = None
) -> dict[str, Any]:
    """Parse and check the ``params`` form field of an inference request; the checked options.

    Args:
        raw: the field (JSON object text; empty = ``{}``).
        options: the model's own options (its ``config`` in ``/info/``): a request may send any of them back
            unchanged (Slicer sends its whole option table), but not change one (``device``, ``model_filename``)
            except ``threshold``.
        value_range: the anomaly map's value range (``[]`` / ``None``: non-negative).

    Raises:
        RequestRefused: (400) broken JSON, not an object, an unknown option, a server option changed, or a bad
            value; the reason names the option.
    """
    params = parse_json_object(raw, "params")
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key == "threshold":
            if value is not None and value != "":
                out[key] = check_threshold(value, value_range)
        elif key == "client_id":  # MONAI Label's client sends null when it has none
            if value is not None and (not isinstance(value, str) or len(value) > 200):
                raise RequestRefused(400, "client_id must be a short string or null")
            out[key] = value
        elif key in _CHOICES:
            _one_of(key, value, _CHOICES[key])
            out[key] = value
        elif key in options:
            allowed = options[key] if isinstance(options[key], list) else [options[key]]
            if value != options[key] and value not in allowed:
                raise RequestRefused(400, f"option {key!r} is fixed by the server ({options[key]!r}), got {value!r}")
        else:
            known = sorted(_FREE_OPTIONS | set(options))
            raise RequestRefused(400, f"unknown option {str(key)[:40]!r} (known: {', '.join(known)})")
    return out


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def parse_json_object(raw: str | None, what: str = "params") -> dict[str, Any]:
    """``raw`` (empty = ``{}``) parsed as a JSON object; 400 for broken JSON, ``NaN`` / ``Infinity`` or a non-object."""
    try:
        value = json.loads(raw or "{}", parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        raise RequestRefused(400, f"{what} is not valid JSON ({str(e)[:120]})") from None
    if not isinstance(value, dict):
        raise RequestRefused(400, f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _one_of(key: str, value: Any, allowed: Sequence[Any]) -> None:
    if not any(type(value) is type(a) and value == a for a in allowed):
        names = ", ".join(json.dumps(a) for a in allowed)
        raise RequestRefused(400, f"{key} must be one of {names}, got {str(value)[:40]!r}")


@dataclass(frozen=True)
class ServerPolicy:
    """The security settings of one server (``medood label serve`` options).

    Attributes:
        allow_upload: whether ``PUT /datastore/image`` and ``PUT /datastore/label`` are open.
        cors_origin: the one web origin (``scheme://host[:port]``) allowed cross-origin access, or ``None``.
        token: shared secret every request must present as ``Authorization: Bearer <token>``, or ``None``.
        max_upload_bytes: largest request body (uploads, sessions, inference forms).
        trusted_hosts: ``Host`` header values accepted (loopback names for a loopback server: DNS rebinding);
            empty = any.
    """

    allow_upload: bool = False
    cors_origin: str | None = None
    token: str | None = None
    max_upload_bytes: int = 512 * 1024**2
    trusted_hosts: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.cors_origin is not None:
            if not re.fullmatch(r"https?://[^/\s?#]+", self.cors_origin):
                raise ValueError(
                    f"--cors-origin must be one origin such as http://127.0.0.1:3000, got {self.cors_origin!r}"
                )
        if self.token is not None and len(self.token) < 16:
            raise ValueError(
                "the token must have at least 16 characters (python -m secrets is not a tool: use "
                "python -c 'import secrets; print(secrets.token_urlsafe())')"
            )
        if self.max_upload_bytes <= 0:
            raise ValueError("the upload size limit must be positive")

    def check_origin(self, origin: str | None) -> None:
        """Refuse (403) a request from a web page of another origin than :attr:`cors_origin`."""
        if origin is not None and origin != self.cors_origin:
            raise RequestRefused(
                403, f"cross-origin request from {origin[:80]!r} refused (the server allows only --cors-origin)"
            )

    def check_token(self, method: str, path: str, authorization: str | None) -> None:
        """Refuse (401) a request without the shared token (login routes excepted)."""
        if self.token is None or _match(_LOGIN_ROUTES, method, path):
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise RequestRefused(401, "this server needs its token: send 'Authorization: Bearer <token>'")

    def check_route(self, method: str, path: str) -> None:
        """Refuse (403) every route that is not open (uploads only with :attr:`allow_upload`)."""
        method = "GET" if method == "HEAD" and _match(_OPEN_ROUTES, "GET", path) else method
        if _match(_OPEN_ROUTES, method, path) or (self.allow_upload and _match(_UPLOAD_ROUTES, method, path)):
            return
        if _match(_UPLOAD_ROUTES, method, path):
            raise RequestRefused(403, "uploads are off on this server (start it with --allow-upload)")
        if method == "DELETE" or path.startswith("/datastore"):
            raise RequestRefused(403, f"{method} {path[:80]} is never allowed: this server does not change studies")
        raise RequestRefused(403, f"{method} {path[:80]} is disabled on this server (inference only, no training)")

    def check_names(self, query: Mapping[str, Sequence[str]]) -> None:
        """Refuse (400) a query whose study / label / tag / session names are not plain names.

        With a ``session_id``, ``image`` is only Slicer's name of its volume (``"3: T1 MPRAGE"``) and is not read.
        """
        for key in NAME_PARAMS:
            if key == "image" and any(query.get("session_id", [])):
                continue
            for value in query.get(key, []):
                if value:
                    check_name(value, key)

    def check_host(self, host: str | None) -> None:
        """Refuse (400) a ``Host`` header outside :attr:`trusted_hosts` (a DNS-rebinding page)."""
        if not self.trusted_hosts:
            return
        name = (host or "").strip().lower()
        name = name.rsplit(":", 1)[0] if name.count(":") == 1 or name.startswith("[") else name
        if name not in self.trusted_hosts:
            raise RequestRefused(400, f"Host {str(host)[:80]!r} is not this server's address")
