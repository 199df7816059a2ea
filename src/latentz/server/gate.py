"""The inference gate: a capped number of jobs at once, shared fairly between clients."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.types import Receive

from latentz.server.errors import ApiError, ClientGone


def client_key(request: Request) -> str:
    """Who a request is from, for fair shares: its IP address (the proxy's X-Forwarded-For when trusted).

    uvicorn replaces the peer address by the forwarded one only for proxies listed in
    ``--forwarded-allow-ips`` (127.0.0.1 by default), so a client cannot pose as another.
    """
    return request.client.host if request.client else "unknown"


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client has gone (call only once the request body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class JobGate:
    """At most N inference jobs at once, shared fairly between clients; the rest wait, then give up with 429.

    ONNX sessions run with one thread each, so more simultaneous jobs than cores only adds memory
    and context switches. Waiting happens in the event loop, not in a thread: a flood of queued
    requests cannot use up the thread pool that light requests (health, model files) run in. A
    freed slot goes to the next client in turn (round robin over clients, first come first served
    within one), so a client with a backlog of 60 requests delays another client's single request
    by at most one job per slot, not by its whole backlog. A client may have at most
    ``max_waiting_per_client`` requests waiting; a request whose client disconnects while waiting
    leaves the line without doing the work. Use from one event loop only (each worker has its own).
    """

    def __init__(self, slots: int, timeout_s: float, max_waiting_per_client: int = 64) -> None:
        self.slots = max(1, slots)
        self.timeout_s = timeout_s
        self.max_waiting_per_client = max(1, max_waiting_per_client)
        self.running = 0
        self.counts: Counter[str] = Counter()
        """served, timed_out, refused (over a client's waiting cap), abandoned (client went away)."""
        self._lines: dict[str, deque[asyncio.Future[None]]] = {}
        """Each waiting client's requests in arrival order; the dict's order is the turn order."""

    @property
    def waiting(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def waiting_for(self, client: str) -> int:
        return len(self._lines.get(client, ()))

    def _busy(self, message: str) -> ApiError:
        return ApiError(429, message, "busy")

    async def acquire(self, client: str, disconnected: Callable[[], Awaitable[None]] | None = None) -> None:
        """Take a slot, waiting in ``client``'s line; 429 after the timeout, `ClientGone` if it leaves."""
        if self.running < self.slots and not self._lines:
            self.running += 1
            self.counts["served"] += 1
            return
        line = self._lines.get(client)
        if line is not None and len(line) >= self.max_waiting_per_client:
            self.counts["refused"] += 1
            raise self._busy(
                f"server busy: {len(line)} of your requests are already waiting for an inference slot "
                f"(at most {self.max_waiting_per_client} per client); retry when some have finished"
            )
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lines.setdefault(client, deque()).append(ticket)
        watcher = asyncio.ensure_future(disconnected()) if disconnected else None
        try:
            waits = {ticket} if watcher is None else {ticket, watcher}
            await asyncio.wait(waits, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._give_up(client, ticket)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        if ticket.done():  # the slot was handed over (running already counts it)
            self.counts["served"] += 1
            return
        self._leave(client, ticket)
        if watcher is not None and watcher.done() and not watcher.cancelled():
            self.counts["abandoned"] += 1
            raise ClientGone
        self.counts["timed_out"] += 1
        raise self._busy(
            f"server busy: all {self.slots} inference slots stayed taken for {self.timeout_s:g} s; retry"
        )

    def _leave(self, client: str, ticket: asyncio.Future[None]) -> None:
        line = self._lines.get(client)
        if line is not None and ticket in line:
            line.remove(ticket)
            if not line:
                del self._lines[client]

    def _give_up(self, client: str, ticket: asyncio.Future[None]) -> None:
        """A cancelled waiter: pass on a slot it was already handed, else just leave the line."""
        if ticket.done() and not ticket.cancelled():
            self.release()
        else:
            ticket.cancel()
            self._leave(client, ticket)

    def release(self) -> None:
        """Hand the slot to the oldest request of the next client in turn, or free it."""
        while self._lines:
            client, line = next(iter(self._lines.items()))
            ticket = line.popleft()
            del self._lines[client]
            if line:
                self._lines[client] = line  # to the back of the turn order
            if not ticket.done():
                ticket.set_result(None)
                return
        self.running -= 1

    @contextlib.asynccontextmanager
    async def slot(
        self, client: str, disconnected: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[None]:
        await self.acquire(client, disconnected)
        try:
            yield
        finally:
            self.release()
