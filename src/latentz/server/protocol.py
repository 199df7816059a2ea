"""uvicorn's h11 HTTP/1.1 protocol with the two connection guards uvicorn lacks.

* **A deadline for request heads.** uvicorn's only timer is keep-alive, and every byte that arrives
  resets it: a client that sends nothing after connecting, or trickles a header a byte a second,
  holds its connection (a file descriptor) forever, and a few thousand of them exhaust the server.
  Here a connection must deliver a complete request head (request line and headers) within
  ``header_timeout_s`` of opening, or of the first byte of its next request on a kept-alive
  connection; otherwise it is answered 408 (when part of a request had arrived) and closed.
* **Closing instead of draining.** When the app answers before it has read a request body (a 413
  for an oversized upload, a 408, a 403), uvicorn either reads and discards the rest of the body
  for as long as the client sends it (without ``Connection: close``: 48 GB in 20 s was measured on
  one connection) or closes the socket with unread bytes in it, which resets the connection and
  can destroy the answer before the client reads it. Here the answer is sent, the sending side
  is shut (FIN), arriving bytes are discarded for at most `LINGER_S` seconds and `LINGER_BYTES`
  bytes (time for the client to read the answer), then the socket is closed.

`latentz serve` and the test servers run this protocol (``http=GuardedH11Protocol``). The app
passes its ``header_timeout_s`` in the ASGI lifespan state (`HEADER_TIMEOUT_STATE`), which uvicorn
hands to every connection's protocol, so each worker process uses its own app's limits.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from latentz.server.limits import Limits
from latentz.server.middleware import SecurityHeaders

HEADER_TIMEOUT_STATE = "latentz.header_timeout_s"
"""Key of the header timeout in the app's lifespan state."""
LINGER_S = 2.0
LINGER_BYTES = 4 * 1024 * 1024
"""How long, and how much of an unread body, a closing connection keeps reading before it closes."""


def connection_error(status: int, code: str, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of an error the HTTP layer answers itself (the app never saw the request),
    in the API's JSON shape and with the security headers, like every other answer."""
    body = json.dumps({"error": message, "code": code, "status": status}, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *SecurityHeaders.HEADERS,
    ]
    return headers, body


def header_timeout_answer(timeout_s: float) -> bytes:
    """The raw 408 for a request head that did not arrive in time."""
    message = f"request headers incomplete after {timeout_s:g} s; send the whole request head at once"
    headers, body = connection_error(408, "timeout", message)
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return b"HTTP/1.1 408 Request Timeout\r\n" + lines + b"\r\n" + body


class _ClosingTransport:
    """The socket's transport as uvicorn's h11 code sees it: ``close()`` lingers while the client is
    still sending a request body (`GuardedH11Protocol.close_connection`); all else is the transport's."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedH11Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol.close_connection()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a request-head deadline and a bounded close (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout_s = float(app_state.get(HEADER_TIMEOUT_STATE, Limits.header_timeout_s))
        self.lingering = False
        self._socket: asyncio.Transport | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_started = False
        """Whether a byte of the awaited request head has arrived (a silent connection is just closed)."""
        self._linger_timer: asyncio.TimerHandle | None = None
        self._discarded = 0

    # -- the connection -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._socket = transport
        super().connection_made(_ClosingTransport(transport, self))  # type: ignore[arg-type]
        self._start_header_timer()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self._close_socket()
            return
        if self.conn.their_state is h11.IDLE:  # bytes of the next request head
            self._head_started = True
            self._start_header_timer()
        super().data_received(data)
        self._settle_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.SEND_BODY:
            # Answered without reading the whole body (and without Connection: close): do not drain it.
            self.close_connection()
            return
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._head_started = True  # part of a pipelined request head is already here
            self._start_header_timer()
        self._settle_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (uvicorn answers text/plain): the API's JSON error instead."""
        message = "malformed HTTP request: the request line or headers cannot be parsed (or are over 16 KiB)"
        headers, body = connection_error(400, "bad_request", message)
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()

    def close_connection(self) -> None:
        """Close the connection; while the client is still sending a body, linger first."""
        socket = self._socket
        assert socket is not None
        if self.lingering or socket.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            self._close_socket()
        else:
            self._linger()

    # -- request-head deadline ------------------------------------------------------------------
    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _settle_header_timer(self) -> None:
        """Stop the deadline once the request head is complete (h11 has left the IDLE state)."""
        if self._header_timer is not None and self.conn.their_state is not h11.IDLE:
            self._header_timer.cancel()
            self._header_timer = None
            self._head_started = False

    def _header_timed_out(self) -> None:
        self._header_timer = None
        socket = self._socket
        if socket is None or socket.is_closing() or self.lingering or self.conn.their_state is not h11.IDLE:
            return
        if not self._head_started:  # never said a word: nothing to answer
            self._close_socket()
            return
        self.logger.info("closing a connection whose request head took over %g s", self.header_timeout_s)
        socket.write(header_timeout_answer(self.header_timeout_s))
        self._linger()

    # -- closing --------------------------------------------------------------------------------
    def _linger(self) -> None:
        """Send what is buffered, shut the sending side, discard what arrives for a bounded time, close."""
        socket = self._socket
        assert socket is not None
        self.lingering = True
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if not socket.can_write_eof():  # TLS cannot half-close
            self._close_socket()
            return
        socket.write_eof()
        socket.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_S, self._close_socket)

    def _close_socket(self) -> None:
        self._cancel_timers()
        if self._socket is not None:
            self._socket.close()

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._linger_timer = None
