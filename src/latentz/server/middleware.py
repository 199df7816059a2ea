"""ASGI middleware: the body guard (too big: 413, too slow: 408) and the security headers on every answer."""

from __future__ import annotations

import asyncio
import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from latentz.server.limits import MAX_JSON_BYTES

CLOSE = (b"connection", b"close")


class _BodyRefused(Exception):
    """Raised inside the app's receive() to stop reading a body; the guard answers for it."""

    def __init__(self, status: int, body: dict[str, object]) -> None:
        super().__init__(body["error"])
        self.status = status
        self.body = body


class BodyGuard:
    """Refuse request bodies that are too big (413) or arrive too slowly (408), before they are parsed.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as it
    arrives and refused as soon as it crosses the limit. While a body is still arriving, each piece
    must come within ``idle_timeout_s`` and the whole body within ``total_timeout_s``: a client that
    trickles bytes cannot hold a connection (and its memory) open for long. Once the body is
    complete, receive() is passed through untimed (the app then only listens for a disconnect).

    Any answer sent before the body has been read to its end (a 413, a 408, an error raised before
    the endpoint reads its upload) carries ``Connection: close``: the server then closes the
    connection instead of reading and discarding the rest of a body that may never end
    (`protocol.GuardedH11Protocol`).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        max_upload_bytes: int,
        idle_timeout_s: float = 30.0,
        total_timeout_s: float = 300.0,
        max_json_bytes: int = MAX_JSON_BYTES,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = max_json_bytes
        self.max_upload_bytes = max_upload_bytes
        self.idle_timeout_s = idle_timeout_s
        self.total_timeout_s = total_timeout_s

    def _too_large(self, size: str, is_json: bool) -> _BodyRefused:
        if is_json:
            message = f"JSON body too large: {size} bytes, the limit is {self.max_json_bytes:,} bytes"
            limit = self.max_json_bytes
        else:
            message = (
                f"upload too large: the request body is {size} bytes, the limit is "
                f"{self.max_upload_bytes:,} bytes per file"
            )
            limit = self.max_upload_bytes
        return _BodyRefused(413, {"error": message, "code": "too_large", "status": 413, "limit": limit})

    def _too_slow(self, received: int, idle: bool) -> _BodyRefused:
        if idle:
            what = f"{received:,} bytes arrived, then nothing for {self.idle_timeout_s:g} s"
        else:
            what = (
                f"only {received:,} bytes arrived in {self.total_timeout_s:g} s, the limit for a whole body"
            )
        message = f"request body too slow: {what}; send the body without pauses"
        return _BodyRefused(408, {"error": message, "code": "timeout", "status": 408})

    @staticmethod
    async def _refuse(send: Send, refusal: _BodyRefused) -> None:
        body = json.dumps(refusal.body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            CLOSE,  # the rest of the body is not read: the connection cannot carry another request
        ]
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        is_json = b"json" in headers.get(b"content-type", b"").lower()
        max_bytes = self.max_json_bytes if is_json else self.max_body_bytes
        declared = headers.get(b"content-length")
        has_body = b"transfer-encoding" in headers or (
            declared is not None and declared.strip().isdigit() and int(declared) > 0
        )
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._refuse(send, self._too_large(f"{int(declared):,}", is_json))
            return
        body = _GuardedBody(self, receive, send, max_bytes, is_json, complete=not has_body)
        try:
            await self.app(scope, body.receive, body.send)
        except _BodyRefused as error:
            if not body.started:
                await self._refuse(send, error)


class _GuardedBody:
    """One request's body as `BodyGuard` lets the app read it: counted, timed, and refused in time."""

    def __init__(
        self, guard: BodyGuard, receive: Receive, send: Send, max_bytes: int, is_json: bool, complete: bool
    ) -> None:
        self.guard = guard
        self._receive = receive
        self._send = send
        self.max_bytes = max_bytes
        self.is_json = is_json
        self.received = 0
        self.complete = complete
        self.refusal: _BodyRefused | None = None
        self.started = False
        self.deadline = time.monotonic() + guard.total_timeout_s

    async def receive(self) -> Message:
        if self.complete:
            return await self._receive()
        wait_s = min(self.guard.idle_timeout_s, max(0.0, self.deadline - time.monotonic()))
        try:
            message = await asyncio.wait_for(self._receive(), timeout=wait_s)
        except TimeoutError:
            self.refusal = self.guard._too_slow(self.received, idle=wait_s == self.guard.idle_timeout_s)
            raise self.refusal from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_bytes:
                self.refusal = self.guard._too_large(f"more than {self.max_bytes:,}", self.is_json)
                raise self.refusal
            self.complete = not message.get("more_body", False)
        else:
            self.complete = True  # a disconnect: nothing more will come
        return message

    async def send(self, message: Message) -> None:
        # The body parser turns our exception into its own 400; answer what it really is.
        starts = message["type"] == "http.response.start" and not self.started
        if self.refusal is not None:
            if starts:
                self.started = True
                await self.guard._refuse(self._send, self.refusal)
            return
        if starts:
            self.started = True
            if not self.complete:  # answered before the body was read: do not read the rest
                names = {name.lower() for name, _ in message.get("headers", ())}
                if b"connection" not in names:
                    message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
        await self._send(message)


class SecurityHeaders:
    """Cross-origin isolation on every response: the pages need it for WASM threads and fine timers."""

    HEADERS = (
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cross-origin-embedder-policy", b"require-corp"),
        (b"cross-origin-resource-policy", b"same-origin"),
        (b"x-content-type-options", b"nosniff"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", ())}
                extra = [(name, value) for name, value in self.HEADERS if name not in names]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)
