"""MONAI Label's FastAPI app, locked down by :class:`~medood.monailabel.policy.ServerPolicy` (``medood label serve``).

MONAI Label 0.8.5 builds one module-level app (``monailabel.app:app``) with a CORS middleware that allows every
origin with credentials, and routes that upload, delete and train. :func:`build_app` wraps that app instead of
forking it:

* its CORS middleware is removed; with ``--cors-origin`` Starlette's ``CORSMiddleware`` allows that one origin,
  without credentials;
* :class:`Guard`, the outermost layer, refuses before MONAI Label sees the request: a foreign ``Host`` (DNS
  rebinding of a loopback server), a foreign ``Origin``, a missing token, a closed route, a name that is a path,
  a body over the size limit;
* the routes that take request data are served first by checked versions that call MONAI Label's own handlers:
  ``POST /infer/{model}`` (unknown model 404, every option checked before inference),
  ``POST /activelearning/{strategy}`` (known strategy, ``client_id`` only), ``PUT /session/`` (one
  NIfTI volume, no archive), ``PUT /datastore/image`` / ``PUT /datastore/label`` (``--allow-upload``: plain names,
  no overwrite, confined to the studies folder), and ``/auth/`` (the shared token as MONAI Label's login);
* FastAPI's request-validation errors (422) become 400 with the reason.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import BackgroundTasks, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from monailabel.endpoints import datastore as ml_datastore
from monailabel.endpoints import infer as ml_infer
from monailabel.endpoints import session as ml_session
from monailabel.interfaces.utils.app import app_instance
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medood.monailabel.policy import (
    RequestRefused,
    ServerPolicy,
    check_infer_params,
    check_name,
    confined,
    parse_json_object,
    study_extension,
)

__all__ = ["Guard", "build_app"]

logger = logging.getLogger(__name__)


def _refuse(e: RequestRefused) -> HTTPException:
    logger.warning("refused (%d): %s", e.status, e.reason)
    return HTTPException(status_code=e.status, detail=e.reason)


class Guard:
    """ASGI middleware applying a :class:`ServerPolicy` before the app sees a request (see the module docstring)."""

    def __init__(self, app: ASGIApp, policy: ServerPolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse the request with its status and reason, or pass it on with a size-limited body."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method, path, p = scope["method"], scope["path"], self.policy
        try:
            p.check_host(headers.get("host"))
            p.check_origin(headers.get("origin"))
            if not (method == "OPTIONS" and p.cors_origin):  # CORS preflight: answered by CORSMiddleware
                p.check_token(method, path, headers.get("authorization"))
                p.check_route(method, path)
                p.check_names(parse_qs(scope.get("query_string", b"").decode("latin-1")))
            length = headers.get("content-length")
            if length is None and "chunked" in headers.get("transfer-encoding", ""):
                raise RequestRefused(411, "send the request body with a Content-Length")
            if length is not None and (not length.isdigit() or int(length) > p.max_upload_bytes):
                raise RequestRefused(413, f"request body over the server's limit of {p.max_upload_bytes} bytes")
        except RequestRefused as e:
            logger.warning("refused %s %s (%d): %s", method, path[:80], e.status, e.reason)
            await JSONResponse({"detail": e.reason}, status_code=e.status)(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.policy.max_upload_bytes:  # a body longer than its Content-Length: stop reading it
                return {"type": "http.disconnect"}
            return message

        return limited


def _medood_app() -> Any:
    return app_instance()


def _add_route(app: Any, path: str, method: str, endpoint: Any) -> None:
    app.add_api_route(path, endpoint, methods=[method])


class _Dispatch:
    """Send the requests that ``checked``'s routes match fully to it, everything else (and lifespan) to ``app``."""

    def __init__(self, checked: Any, app: ASGIApp) -> None:
        self.checked, self.app = checked, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(r.matches(scope)[0] == Match.FULL for r in self.checked.router.routes):
            await self.checked(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _json_object(raw: str, what: str) -> str:
    try:
        return json.dumps(parse_json_object(raw, what))
    except RequestRefused as e:
        raise _refuse(e) from None


async def _infer(
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    params: Annotated[str, Form()] = "{}",
    file: Annotated[UploadFile | None, File()] = None,
    label: Annotated[UploadFile | None, File()] = None,
    output: ml_infer.ResultType | None = None,
) -> Any:
    """``POST /infer/{model}``: unknown model 404; image / session and every option checked before inference."""
    instance = _medood_app()
    task = instance.infer_task(model)
    if task is None:
        raise _refuse(RequestRefused(404, f"unknown model {model[:80]!r} (served: {', '.join(instance.models())})"))
    try:
        if file is not None or label is not None:
            raise RequestRefused(400, "files are not accepted with an inference: send the volume by PUT /session/")
        if session_id:
            sessions = instance.sessions()
            if sessions is None or not sessions.get_session(session_id, update_ts=False):
                raise RequestRefused(404, f"session {session_id!r} not found (expired or removed)")
        elif not image:
            raise RequestRefused(400, "give image (a study id of the datastore) or session_id")
        checked = check_infer_params(params, task.config(), getattr(task, "map_value_range", None))
    except RequestRefused as e:
        raise _refuse(e) from None
    return ml_infer.run_inference(background_tasks, model, image, session_id, json.dumps(checked), None, None, output)


async def _next_sample(strategy: str, request: Request) -> Any:
    """``POST /activelearning/{strategy}`` (Slicer's *Next Sample*): a known strategy, a body of ``client_id`` only."""
    from monailabel.endpoints import activelearning as ml_activelearning

    try:
        if strategy not in _medood_app().info().get("strategies", {}):
            raise RequestRefused(404, f"unknown strategy {strategy[:80]!r}")
        params = parse_json_object((await request.body()).decode("utf-8", "replace"), "the request body")
        unknown = sorted(set(params) - {"client_id"})
        if unknown:
            raise RequestRefused(400, f"unknown option {unknown[0][:40]!r} (known: client_id)")
        if params.get("client_id") is not None and not isinstance(params["client_id"], str):
            raise RequestRefused(400, "client_id must be a string or null")
    except RequestRefused as e:
        raise _refuse(e) from None
    return ml_activelearning.sample(strategy, params, None)


async def _create_session(
    background_tasks: BackgroundTasks,
    files: Annotated[list[UploadFile], File()],
    uncompress: bool = False,
    expiry: int = 0,
) -> Any:
    """``PUT /session/``: one NIfTI volume (no archive) into the temporary session store; expired ones go first."""
    try:
        if uncompress:
            raise RequestRefused(400, "archives are not accepted: send one NIfTI volume")
        if len(files) != 1:
            raise RequestRefused(400, f"send exactly one NIfTI volume, got {len(files)} files")
        study_extension(files[0].filename)
        check_name(Path(files[0].filename or "").name, "file name")
        if expiry < 0:
            raise RequestRefused(400, "expiry must be >= 0 seconds")
    except RequestRefused as e:
        raise _refuse(e) from None
    _medood_app().cleanup_sessions()
    return ml_session.create_session(background_tasks, False, expiry, files)


async def _save_label(
    background_tasks: BackgroundTasks,
    image: str,
    label: Annotated[UploadFile, File()],
    params: Annotated[str, Form()] = "{}",
    tag: str = "final",
) -> Any:
    """``PUT /datastore/label`` (``--allow-upload``): a NIfTI label of an existing study, tag ``final``."""
    try:
        check_name(image, "image")
        if not _medood_app().datastore().get_image_uri(image):
            raise RequestRefused(404, f"study {image!r} not found")
        if tag != "final":
            raise RequestRefused(400, "labels are saved with the tag 'final' only")
        study_extension(label.filename)
    except RequestRefused as e:
        raise _refuse(e) from None
    return ml_datastore.save_label(background_tasks, image, _json_object(params, "params"), tag, label, None)


def _install_upload(app: Any, studies: Path) -> None:
    async def add_image(
        background_tasks: BackgroundTasks,
        file: Annotated[UploadFile, File()],
        image: str | None = None,
        params: Annotated[str, Form()] = "{}",
    ) -> Any:
        try:
            ext = study_extension(file.filename)
            image_id = check_name(image or Path(file.filename or "").name[: -len(ext)], "image")
            if _medood_app().datastore().get_image_uri(image_id):
                raise RequestRefused(409, f"study {image_id!r} exists: uploads never replace a study")
            confined(studies / f"{image_id}{ext}", studies)
        except RequestRefused as e:
            raise _refuse(e) from None
        return ml_datastore.add_image(background_tasks, image_id, _json_object(params, "params"), file, None)

    _add_route(app, "/datastore/image", "PUT", add_image)
    _add_route(app, "/datastore/label", "PUT", _save_label)


def _install_auth(app: Any, policy: ServerPolicy) -> None:
    async def auth_enabled() -> dict[str, Any]:
        return {"enabled": policy.token is not None, "client_id": "medood", "realm": ""}

    async def auth_token(request: Request) -> Any:
        if policy.token is None:
            return {"access_token": None, "token_type": None}
        form = await request.form()
        try:
            policy.check_token("GET", "/info/", f"Bearer {form.get('password', '')}")
        except RequestRefused as e:
            raise _refuse(RequestRefused(401, "wrong token (give the server's token as the password)")) from e
        return {"access_token": policy.token, "token_type": "Bearer"}

    _add_route(app, "/auth/", "GET", auth_enabled)
    _add_route(app, "/auth/token", "POST", auth_token)


async def _bad_request(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else str(exc)
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=400)


def build_app(policy: ServerPolicy, studies: str | os.PathLike[str]) -> ASGIApp:
    """MONAI Label's app with ``policy`` applied (an ASGI app for ``uvicorn.run``).

    The checked routes live in a small FastAPI app of their own that sees each request first (FastAPI 0.16x
    keeps included routers apart, so MONAI Label's routes cannot be replaced in place).
    """
    from monailabel.app import app

    app.user_middleware = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    app.add_exception_handler(RequestValidationError, _bad_request)
    checked = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    checked.add_exception_handler(RequestValidationError, _bad_request)
    _add_route(checked, "/infer/{model}", "POST", _infer)
    _add_route(checked, "/session/", "PUT", _create_session)
    _add_route(checked, "/activelearning/{strategy}", "POST", _next_sample)
    _install_upload(checked, Path(studies).resolve())
    _install_auth(checked, policy)
    inner: ASGIApp = _Dispatch(checked, app)
    logger.info("MONAI Label's allow-all CORS middleware removed; allowed origin: %s", policy.cors_origin or "none")
    if policy.cors_origin:
        inner = CORSMiddleware(
            inner,
            allow_origins=[policy.cors_origin],
            allow_credentials=False,
            allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return Guard(inner, policy)
