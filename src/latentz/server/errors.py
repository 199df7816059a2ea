"""Every failure the API reports, as one JSON shape with a documented status.

Clients (the pages, scripts, tests) branch on ``code``, show ``error`` to people, and never see
an HTML error page or a bare traceback. The statuses are part of the API contract:

=====  =====================  ==============================================================
400    bad_request            malformed request: a bad field, a corrupt image, a corrupt .latentz,
                              a malformed Range header
403    cross_origin           a request that would run a model, sent by a page of another site
                              (Origin / Sec-Fetch-Site; `latentz.server.origins`), unless allowed
404    unknown_model          no installed model has that name
404    not_found              no such page, file or route
405    method_not_allowed     e.g. GET on an upload endpoint (the Allow header lists the methods)
408    timeout                the request body arrived too slowly (a pause over the idle timeout,
                              or the whole body over its deadline)
409    model_mismatch         the .latentz file was made by another model (fingerprint, entropy
                              model or latent shape differ), or by no model installed here
409    model_not_exported     the bundle has no ONNX files / entropy model yet (`latentz export`)
413    too_large              upload over the byte limit, or an image over the pixel limit
                              (checked from the header, before decoding: decompression bombs)
415    unsupported_media      content sniffed as neither a supported image nor a .latentz file,
                              or a .latentz format version this server cannot read
416    range_not_satisfiable  a Range outside the file (Content-Range gives its size)
421    unknown_host           the Host header names a host this server does not answer to
                              (DNS rebinding; `latentz serve --allowed-host`)
429    busy                   every inference slot stayed busy for the queue timeout, or this client
                              already has its maximum of requests waiting (Retry-After: 1)
500    internal_error         a bug in latentz; the message says what failed
=====  =====================  ==============================================================

Every answer, 500s included, carries the same security headers (`limits.SecurityHeaders`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("latentz.server")

STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media",
    416: "range_not_satisfiable",
    421: "unknown_host",
    429: "busy",
}


CLIENT_CLOSED_REQUEST = 499
"""nginx's status for a request whose client went away first; only ever seen in the access log."""


class ClientGone(Exception):
    """The client closed its connection while its request waited for a slot: skip the work."""


class ErrorBody(BaseModel):
    """Every error response: what went wrong (for people), a code (for programs), and the status."""

    model_config = ConfigDict(extra="allow")

    error: str
    code: str
    status: int


class ApiError(Exception):
    """An expected failure: becomes ``{"error": message, "code": code, ...extra}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or STATUS_CODES.get(status, "error")
        self.headers = dict(headers or {})
        if status == 429:
            self.headers.setdefault("Retry-After", "1")
        self.extra = extra

    def response(self) -> JSONResponse:
        body = {"error": self.message, "code": self.code, "status": self.status, **self.extra}
        return JSONResponse(body, status_code=self.status, headers=self.headers or None)


def error_response(status: int, message: str, code: str | None = None, **extra: Any) -> JSONResponse:
    return ApiError(status, message, code, **extra).response()


def _describe_validation(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
    message = str(error.get("msg", "invalid value"))
    return f"{where}: {message}" if where else message


def install_handlers(app: FastAPI) -> None:
    """Route FastAPI's own errors (validation, 404, 405) and unexpected exceptions into the JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_describe_validation(item) for item in error.errors()]
        details = [
            {"field": ".".join(str(p) for p in item.get("loc", ())), "message": str(item.get("msg", ""))}
            for item in error.errors()
        ]
        return error_response(400, "invalid request: " + "; ".join(problems), details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"no such page or endpoint: {request.method} {request.url.path} (see /docs)"
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path} (see /docs)"
        else:
            message = str(error.detail)
        response = error_response(error.status_code, message)
        response.headers.update(error.headers or {})  # e.g. Allow on a 405 (RFC 9110 requires it)
        return response

    @app.exception_handler(ClientGone)
    async def _client_gone(_: Request, __: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        message = f"internal error ({type(error).__name__}: {error}); this is a bug in latentz"
        return error_response(500, message, "internal_error")
