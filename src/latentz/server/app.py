"""The FastAPI app: wiring. It builds the shared state, the middleware and error handlers, and includes
the routers (`latentz.server.routers`: models, codec, latents, pages).

Endpoints that run a network are ``async``: they check the request in the event loop, wait for
an inference slot there (`gate.JobGate`: a capped number of jobs at once, shared fairly between
clients; waiting holds no thread), then run the work in the thread pool. Each model's ONNX
sessions are created once (at start-up) and shared by every thread. Light endpoints (health,
model list, files) are plain ``def`` functions in the same thread pool, which queued heavy
requests therefore never fill. JSON answers that can be big (latents, base64 PNGs) are rendered to
bytes in the worker thread too (`answers.json_answer`), never in the event loop. Error statuses: see
`latentz.server.errors`; who may call: `latentz.server.origins`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import Match
from starlette.types import ASGIApp, Scope

import latentz
from latentz.server import assets
from latentz.server.dependencies import ServerState
from latentz.server.errors import ERROR_SCHEMA, ERRORS, ApiError, install_handlers
from latentz.server.gate import JobGate
from latentz.server.limits import MULTIPART_OVERHEAD, Limits
from latentz.server.middleware import BodyGuard, SecurityHeaders
from latentz.server.model_files import ModelFiles
from latentz.server.origins import CrossSiteGuard
from latentz.server.protocol import HEADER_TIMEOUT_STATE
from latentz.server.registry import SERVED_FILES, ModelRegistry
from latentz.server.routers import codec, latents, models, pages

log = logging.getLogger("latentz.server")

LIMITS_ENVIRONMENT = "LATENTZ_SERVER_LIMITS"
"""JSON of `Limits` fields, read by `create_app_from_environment` in each uvicorn worker process."""
DESCRIPTION = (
    "Image VAEs as a learned codec: encode an image to a tiny .latentz file, decode it back, "
    "sample and interpolate. Errors are JSON `{error, code, status}`; see each endpoint's statuses."
)


class LatentzApp(FastAPI):
    """FastAPI whose every answer, 500s included, carries the `SecurityHeaders`, and whose OpenAPI
    schema documents the 400 and 421 this app answers instead of FastAPI's 422.

    Starlette renders the 500 handler's answer in its ServerErrorMiddleware, which sits outside
    all middleware added with ``add_middleware``; so the headers wrap the whole stack instead.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())

    def openapi(self) -> dict[str, Any]:
        """FastAPI's schema, minus the 422 it documents for every validated input: this app answers 400."""
        if self.openapi_schema is None:
            schema = get_openapi(
                title=self.title, version=self.version, description=self.description, routes=self.routes
            )
            for operations in schema["paths"].values():
                for operation in operations.values():
                    _document_errors(operation.get("responses", {}))
            for unused in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            self.openapi_schema = schema
        return self.openapi_schema


def _document_errors(responses: dict[str, Any]) -> None:
    responses["421"] = {  # every route checks the Host header
        "description": "The Host header names a host this server does not answer to",
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
    }
    if responses.pop("422", None) is not None:
        responses.setdefault("400", {"description": ERRORS[400]["description"]})
        responses["400"]["content"] = {"application/json": {"schema": ERROR_SCHEMA}}


def _state(limits: Limits, node_modules: Path | None) -> ServerState:
    registry = ModelRegistry()
    return ServerState(
        limits=limits,
        sizes=limits.sizes(),
        registry=registry,
        gate=JobGate(limits.max_concurrent_jobs, limits.queue_timeout_s, limits.max_waiting_per_client),
        web_runtime=assets.find_web_runtime(node_modules),
        swagger_ui=assets.find_package(assets.SWAGGER_UI, node_modules),
        model_files=ModelFiles(registry.file_path),
        worker=secrets.token_hex(6),
    )


def create_app(
    limits: Limits | None = None, *, preload: bool = True, node_modules: Path | None = None
) -> FastAPI:
    """The latentz web app. ``preload`` creates every model's ONNX sessions at start-up.

    Serve it with ``http=GuardedH11Protocol`` (as `latentz serve` does) for its header timeout and
    for closing, rather than draining, connections whose body it refused.
    """
    state = _state(limits or Limits(), node_modules)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        _start(state, preload)
        # uvicorn hands the lifespan state to each connection's protocol (`GuardedH11Protocol`).
        yield {HEADER_TIMEOUT_STATE: state.limits.header_timeout_s}

    app = LatentzApp(
        title="latentz",
        version=latentz.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by the pages router from node_modules, not from a CDN
        redoc_url=None,
        openapi_url=None,  # served by the pages router, compressed and revalidated
    )
    app.state.server = state
    app.state.registry = state.registry
    app.state.limits = state.limits
    app.state.gate = state.gate
    app.state.web_runtime = state.web_runtime
    install_handlers(app)
    sampling = latents.sampling_router(state.limits)
    for router in (models.router, codec.router, latents.router, sampling, pages.router):
        app.include_router(router)
    _add_middleware(app, state.limits, sampling)
    return app


def _start(state: ServerState, preload: bool) -> None:
    """Find the models (and with ``preload`` create their sessions and warm the browser files up)."""
    state.registry.refresh()
    if preload:
        loaded = state.registry.preload()
        log.info("models loaded: %s", ", ".join(loaded) or "none")
    for package in (state.web_runtime, state.swagger_ui):
        if package.error:
            log.warning("%s", package.detail)
    if preload:  # compress the big files and make the lean networks before the first visitor asks
        threading.Thread(target=_warm_up, args=(state,), name="latentz-warm-up", daemon=True).start()
    else:
        state.warmed.set()


def _warm_up(state: ServerState) -> None:
    """What a first visit fetches, made ready at start-up (each is made once, whoever asks first)."""
    web_runtime = state.web_runtime
    try:
        for name in web_runtime.package.files if web_runtime.dist else ():
            assets.file_payload(assets.vendor_file(web_runtime, name))
        for page in assets.PAGES.values():
            assets.render_page(assets.web_file(page), web_runtime)
        for name in state.registry.names():
            with contextlib.suppress(ApiError):
                state.model_files.urls(state.registry.info(name), SERVED_FILES)
    except Exception:  # a warm-up that fails leaves the work to the first request
        log.exception("warming up the browser files failed")
    finally:
        state.warmed.set()


def _add_middleware(app: FastAPI, limits: Limits, sampling: APIRouter) -> None:
    """Who may call, and how big a body may be (outermost last)."""

    def runs_network(scope: Scope) -> bool:
        """GET requests that run a model (every other method is checked anyway)."""
        return any(route.matches(scope)[0] is Match.FULL for route in sampling.routes)

    app.add_middleware(
        BodyGuard,
        max_body_bytes=limits.max_upload_bytes + MULTIPART_OVERHEAD,
        max_upload_bytes=limits.max_upload_bytes,
        idle_timeout_s=limits.body_idle_timeout_s,
        total_timeout_s=limits.body_timeout_s,
    )
    app.add_middleware(  # outside the body guard: a stranger's request is refused before its size
        CrossSiteGuard,
        allowed_hosts=limits.allowed_hosts,
        allowed_origins=limits.allowed_origins,
        runs_network=runs_network,
    )


def create_app_from_environment() -> FastAPI:
    """The app for each of ``latentz serve --workers N``'s worker processes, with the command's limits.

    uvicorn imports a factory by name in every worker, so the limits travel as JSON in
    ``$LATENTZ_SERVER_LIMITS`` (set by `latentz serve`).
    """
    settings = json.loads(os.environ.get(LIMITS_ENVIRONMENT) or "{}")
    return create_app(Limits(**settings))
