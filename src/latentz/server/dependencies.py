"""What the routers share, as FastAPI dependencies: the server's state (with its models by name) and the gate.

The app factory builds one `ServerState` and keeps it on ``app.state.server``; an endpoint asks for
what it needs (``state: Server``, ``jobs: Jobs``) instead of closing over it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from latentz.codec.limits import SizeLimits
from latentz.runtime import ModelRuntime
from latentz.server import assets
from latentz.server.errors import model_errors
from latentz.server.gate import JobGate, client_key, wait_for_disconnect
from latentz.server.limits import Limits
from latentz.server.model_files import ModelFiles
from latentz.server.registry import ModelRegistry

T = TypeVar("T")


@dataclass(frozen=True)
class ServerState:
    """Everything one app's endpoints share (each uvicorn worker builds its own)."""

    limits: Limits
    sizes: SizeLimits
    registry: ModelRegistry
    gate: JobGate
    web_runtime: assets.WebRuntime
    swagger_ui: assets.WebRuntime
    model_files: ModelFiles
    worker: str
    """Which worker answered, for `latentz serve --workers N` (random: a PID tells strangers too much)."""
    openapi_payload: list[assets.Payload] = field(default_factory=list)
    """The OpenAPI document, rendered and compressed on first request (it is fixed once the app runs)."""
    warmed: threading.Event = field(default_factory=threading.Event)
    """Set once start-up work is done (sessions, compressed browser files, lean networks): health says
    so, and a measurement of steady memory starts after it."""

    async def runtime(self, name: str) -> ModelRuntime:
        """The named model: 404 for an unknown name, 409 for one not exported; in a thread, since an
        unknown name rescans the bundle folders.

        Called in the endpoint, not as a dependency of its own: FastAPI runs dependencies before it
        validates the body and query, and a malformed request answers 400 whatever model it names.
        """
        return await run_in_threadpool(self.registry.runtime, name)


def server_state(request: Request) -> ServerState:
    return request.app.state.server


Server = Annotated[ServerState, Depends(server_state)]


@dataclass(frozen=True)
class JobRunner:
    """The inference gate for one request."""

    gate: JobGate
    request: Request

    async def run(self, work: Callable[[], T]) -> T:
        """Wait for an inference slot in the event loop (no thread held), then run ``work`` in a thread.

        A request whose client disconnects while waiting leaves the line without doing the work.
        """
        disconnected = partial(wait_for_disconnect, self.request.receive)
        async with self.gate.slot(client_key(self.request), disconnected):
            with model_errors():
                return await run_in_threadpool(work)


def job_runner(request: Request, state: Server) -> JobRunner:
    return JobRunner(state.gate, request)


Jobs = Annotated[JobRunner, Depends(job_runner)]
