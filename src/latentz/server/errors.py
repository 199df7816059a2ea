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

Every answer, 500s included, carries the same security headers (`middleware.SecurityHeaders`).
The library's own exceptions map to statuses through one table, `EXCEPTION_STATUSES`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from latentz import codec, imaging
from latentz.codec import EntropyModelError
from latentz.codec.limits import TooLargeError
from latentz.runtime import ModelRuntimeError, OutOfMemoryError

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


@dataclass(frozen=True)
class Mapped:
    """How one of the library's exceptions is answered: its status, code and message."""

    status: int
    code: str | None = None
    message: Callable[[Exception], str] = str
    with_limit: bool = False  # the exception's ``limit`` goes into the answer


EXCEPTION_STATUSES: dict[type[Exception], Mapped] = {
    TooLargeError: Mapped(413, "too_large", with_limit=True),
    OutOfMemoryError: Mapped(413, "too_large", lambda error: f"too large for this server's memory: {error}"),
    codec.ModelMismatchError: Mapped(409, "model_mismatch"),
    codec.LatentzFormatError: Mapped(400),
    codec.CodecSettingError: Mapped(400),
    ModelRuntimeError: Mapped(409, "model_not_exported"),
    EntropyModelError: Mapped(409, "model_not_exported"),
    imaging.ImageError: Mapped(400, message=lambda error: str(error).replace("<bytes>: ", "")),
}
"""The runtime's and codec's exceptions as API errors (the most specific class in an exception's MRO
wins, as in Starlette's handler lookup): used by `model_errors` and by the handlers `install_handlers`
registers, so an exception answers the same status wherever it is raised."""


def as_api_error(error: Exception) -> ApiError | None:
    """The API error that ``error`` stands for under `EXCEPTION_STATUSES`, if any."""
    for kind in type(error).__mro__:
        mapped = EXCEPTION_STATUSES.get(kind)
        if mapped is not None:
            extra = {"limit": getattr(error, "limit", None)} if mapped.with_limit else {}
            return ApiError(mapped.status, mapped.message(error), mapped.code, **extra)
    return None


@contextlib.contextmanager
def model_errors() -> Iterator[None]:
    """Turn the runtime's and codec's exceptions into API errors with their own messages."""
    try:
        yield
    except tuple(EXCEPTION_STATUSES) as error:
        raise as_api_error(error) from None


def _error_doc(description: str) -> dict[str, Any]:
    return {"description": description, "model": ErrorBody}


ERRORS: dict[int, dict[str, Any]] = {
    400: _error_doc("Malformed request, corrupt image or corrupt .latentz file"),
    403: _error_doc("A cross-site request (Origin / Sec-Fetch-Site of another site, not allowed)"),
    404: _error_doc("Unknown model (the error lists the installed ones), or no such file"),
    408: _error_doc("The request body arrived too slowly (idle or total body timeout)"),
    409: _error_doc("The file was made by another model, or the model is not exported"),
    413: _error_doc("Upload over the byte limit, or image over the pixel limit"),
    415: _error_doc("Content is not a supported image / not a .latentz file (sniffed)"),
    429: _error_doc(
        "All inference slots stayed busy for the queue timeout, or this client already has its "
        "maximum of requests waiting (Retry-After: 1)"
    ),
}
"""The statuses as OpenAPI documents them."""
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = dict(ERRORS)
"""Every error an endpoint that takes a body and runs a model can answer."""
ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorBody"}
QUERY_ERRORS: dict[int | str, dict[str, Any]] = {
    status: ERRORS[status] for status in (400, 403, 404, 409, 429)
}
"""What a bodiless endpoint that runs a model can answer."""


def _describe_validation(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
    message = str(error.get("msg", "invalid value"))
    return f"{where}: {message}" if where else message


def install_handlers(app: FastAPI) -> None:
    """Route FastAPI's own errors (validation, 404, 405) and unexpected exceptions into the JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return error.response()

    async def _mapped_error(_: Request, error: Exception) -> JSONResponse:
        api_error = as_api_error(error)
        assert api_error is not None  # registered for the table's classes only
        return api_error.response()

    for kind in EXCEPTION_STATUSES:
        app.add_exception_handler(kind, _mapped_error)

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
