"""Fair shares and timeouts: one client cannot starve the others, and slow or vanished clients cost little.

The gate's rules are checked directly (round robin between clients, FIFO within one, caps,
timeouts, disconnects), then over real HTTP against uvicorn: a slot is held by a real request
to a route the test adds to the real app, so what queues behind it, and in which order it is
served, is deterministic. No assertion depends on how fast this (shared) machine is.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import pytest
from conftest import LiveServer, make_digits, running_server
from fastapi import FastAPI

from latentz import imaging, runtime
from latentz.server import Limits, create_app
from latentz.server.errors import ApiError, ClientGone
from latentz.server.gate import JobGate

HOLDER = "holder"
FLOODER = "10.0.0.1"
NEIGHBOUR = "10.0.0.2"
POLL_DEADLINE_S = 60.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (server state read from the test thread) until it holds; fail after a minute."""
    deadline = time.monotonic() + POLL_DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


# -- the gate's rules ---------------------------------------------------------------------------
def run(coroutine_function: Callable[[], object]) -> None:
    asyncio.run(coroutine_function())  # type: ignore[arg-type]


async def _queue(gate: JobGate, client: str, label: str, order: list[str]) -> None:
    await gate.acquire(client)
    order.append(label)
    gate.release()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_slots_go_round_robin_between_clients_and_in_order_within_one() -> None:
    async def scenario() -> None:
        gate = JobGate(slots=1, timeout_s=30)
        order: list[str] = []
        await gate.acquire(HOLDER)
        tasks = [asyncio.create_task(_queue(gate, "A", f"A{i}", order)) for i in range(4)]
        await _settle()
        tasks += [asyncio.create_task(_queue(gate, "B", "B0", order))]
        await _settle()
        tasks += [asyncio.create_task(_queue(gate, "C", f"C{i}", order)) for i in range(2)]
        await _settle()
        assert (gate.waiting, gate.waiting_for("A"), gate.running) == (7, 4, 1)
        gate.release()
        await asyncio.gather(*tasks)
        assert order == ["A0", "B0", "C0", "A1", "C1", "A2", "A3"]
        assert (gate.running, gate.waiting, gate.counts["served"]) == (0, 0, 8)

    run(scenario)


def test_a_client_over_its_waiting_cap_is_refused_at_once_others_still_queue() -> None:
    async def scenario() -> None:
        gate = JobGate(slots=1, timeout_s=30, max_waiting_per_client=2)
        order: list[str] = []
        await gate.acquire(HOLDER)
        queued = [asyncio.create_task(_queue(gate, "A", f"A{i}", order)) for i in range(2)]
        await _settle()
        with pytest.raises(ApiError) as refused:
            await gate.acquire("A")
        assert (refused.value.status, refused.value.code) == (429, "busy")
        assert "2 of your requests are already waiting" in refused.value.message
        queued.append(asyncio.create_task(_queue(gate, "B", "B0", order)))
        await _settle()
        gate.release()
        await asyncio.gather(*queued)
        assert order == ["A0", "B0", "A1"]
        assert gate.counts["refused"] == 1

    run(scenario)


def test_a_waiter_that_times_out_leaves_the_line_with_429() -> None:
    async def scenario() -> None:
        gate = JobGate(slots=1, timeout_s=0.05)
        await gate.acquire(HOLDER)
        with pytest.raises(ApiError) as busy:
            await gate.acquire("A")
        assert busy.value.status == 429 and "stayed taken for 0.05 s" in busy.value.message
        assert (gate.waiting, gate.counts["timed_out"]) == (0, 1)
        gate.release()
        assert gate.running == 0

    run(scenario)


def test_a_waiter_whose_client_disconnects_leaves_without_taking_a_slot() -> None:
    async def scenario() -> None:
        gate = JobGate(slots=1, timeout_s=30)
        gone = asyncio.Event()
        await gate.acquire(HOLDER)
        waiter = asyncio.create_task(gate.acquire("A", gone.wait))
        await _settle()
        assert gate.waiting_for("A") == 1
        gone.set()
        with pytest.raises(ClientGone):
            await waiter
        assert (gate.waiting, gate.counts["abandoned"]) == (0, 1)
        gate.release()
        assert gate.running == 0

    run(scenario)


def test_a_cancelled_waiter_passes_on_a_slot_it_was_handed() -> None:
    """Cancelled just after the slot was handed over (server shutdown): the slot must not leak."""

    async def scenario() -> None:
        gate = JobGate(slots=1, timeout_s=30)
        await gate.acquire(HOLDER)
        first = asyncio.create_task(gate.acquire("A"))
        await _settle()
        gate.release()  # hands the slot to `first` ...
        first.cancel()  # ... which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await first
        assert gate.running == 0
        await asyncio.wait_for(gate.acquire("B"), timeout=5)
        assert gate.running == 1

    run(scenario)


# -- over real HTTP -------------------------------------------------------------------------------
def add_slot_holder(app: FastAPI) -> threading.Event:
    """A route that holds one of the app's inference slots until the returned event is set."""
    release = threading.Event()

    @app.post("/test/hold-slot", include_in_schema=False)
    async def hold_slot() -> dict[str, bool]:
        async with app.state.gate.slot(HOLDER):
            await anyio.to_thread.run_sync(release.wait)
        return {"held": True}

    return release


class HeldServer:
    """A live server whose only inference slot is held by the test until `release()`."""

    def __init__(self, live: LiveServer, release: threading.Event, holder: threading.Thread) -> None:
        self.live = live
        self.gate: JobGate = live.app.state.gate
        self._release = release
        self._holder = holder

    def release(self) -> None:
        self._release.set()
        self._holder.join(timeout=POLL_DEADLINE_S)


@pytest.fixture()
def held_server_factory(web_model: str) -> Iterator[Callable[..., HeldServer]]:
    servers: list[tuple[HeldServer, object]] = []

    def start(**limits: object) -> HeldServer:
        app = create_app(Limits(**{"max_concurrent_jobs": 1, **limits}), preload=True)  # type: ignore[arg-type]
        release = add_slot_holder(app)
        context = running_server(app)
        live = context.__enter__()
        holder = threading.Thread(
            target=lambda: httpx.post(f"{live.url}/test/hold-slot", timeout=POLL_DEADLINE_S), daemon=True
        )
        holder.start()
        server = HeldServer(live, release, holder)
        wait_until(lambda: server.gate.running == 1, "the holder has the slot")
        servers.append((server, context))
        return server

    yield start
    for server, context in servers:
        server.release()
        context.__exit__(None, None, None)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def digit_latentz(web_model: str) -> bytes:
    model = runtime.load(web_model)
    png = imaging.png_bytes(make_digits(1, seed=11)[0][0][:, :, None])
    return model.compress(model.prepare(png).image, quality=75)


def test_a_flooding_client_cannot_starve_another(
    held_server_factory: Callable[..., HeldServer], web_model: str, digit_latentz: bytes
) -> None:
    """48 queued heavy requests from one client (more than the 40 threads of the pool): another
    client's health check is answered while they all still wait, and its one decode is served
    right after the flooder's first request, not after its whole backlog."""
    server = held_server_factory()
    url, flood_size = server.live.url, 48
    completions: list[tuple[str, int]] = []
    lock = threading.Lock()

    def request(client: str, method: str, path: str, **kwargs: object) -> int:
        headers = {"X-Forwarded-For": client}
        response = httpx.request(method, url + path, headers=headers, timeout=POLL_DEADLINE_S, **kwargs)  # type: ignore[arg-type]
        with lock:
            completions.append((client, response.status_code))
        return response.status_code

    with ThreadPoolExecutor(max_workers=flood_size + 1) as pool:
        flood = [
            pool.submit(request, FLOODER, "GET", f"/api/models/{web_model}/sample?count=2&seed={i}")
            for i in range(flood_size)
        ]
        wait_until(lambda: server.gate.waiting_for(FLOODER) == flood_size, "the whole flood is queued")

        health = httpx.get(f"{url}/api/health", headers={"X-Forwarded-For": NEIGHBOUR}, timeout=30)
        assert health.status_code == 200
        assert health.json()["jobs"]["waiting"] == flood_size  # answered while the flood still waits
        assert completions == []

        neighbour = pool.submit(
            request, NEIGHBOUR, "POST", "/api/decode", files={"file": ("d", digit_latentz)}
        )
        wait_until(lambda: server.gate.waiting_for(NEIGHBOUR) == 1, "the neighbour's decode is queued")
        server.release()
        assert neighbour.result() == 200
        assert [future.result() for future in flood] == [200] * flood_size

    order = [client for client, _ in completions]
    # Strict first come, first served would put the neighbour 49th; fair turns put it 2nd
    # (one position of slack for the order in which two responses reach two client threads).
    assert order.index(NEIGHBOUR) <= 2, order
    assert server.gate.counts["served"] == flood_size + 2  # + the holder


def test_over_the_waiting_cap_is_429_for_that_client_only(
    held_server_factory: Callable[..., HeldServer], digit_latentz: bytes
) -> None:
    server = held_server_factory(max_waiting_per_client=3)
    url = server.live.url

    def decode(client: str) -> httpx.Response:
        headers = {"X-Forwarded-For": client}
        return httpx.post(
            f"{url}/api/decode", files={"file": ("d", digit_latentz)}, headers=headers, timeout=60
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        queued = [pool.submit(decode, FLOODER) for _ in range(3)]
        wait_until(lambda: server.gate.waiting_for(FLOODER) == 3, "three requests are queued")
        refused = decode(FLOODER)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "busy" and "at most 3 per client" in refused.json()["error"]
        assert refused.headers["retry-after"] == "1"
        neighbour = pool.submit(decode, NEIGHBOUR)
        wait_until(lambda: server.gate.waiting_for(NEIGHBOUR) == 1, "the neighbour is queued, not refused")
        server.release()
        assert [future.result().status_code for future in [*queued, neighbour]] == [200] * 4


def test_a_full_queue_answers_429_with_retry_after(
    held_server_factory: Callable[..., HeldServer], digit_latentz: bytes
) -> None:
    server = held_server_factory(queue_timeout_s=0.05)
    url = server.live.url
    response = httpx.post(f"{url}/api/decode", files={"file": ("x", digit_latentz)}, timeout=30)
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "busy" and "retry" in response.json()["error"]
    assert response.headers["retry-after"] == "1"
    server.release()
    assert (
        httpx.post(f"{url}/api/decode", files={"file": ("x", digit_latentz)}, timeout=30).status_code == 200
    )


def test_a_request_whose_client_hangs_up_while_queued_is_never_run(
    held_server_factory: Callable[..., HeldServer], digit_latentz: bytes
) -> None:
    server = held_server_factory()
    url = server.live.url
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        httpx.post(
            f"{url}/api/decode", files={"file": ("x", digit_latentz)}, timeout=httpx.Timeout(30, read=0.5)
        )
    wait_until(lambda: server.gate.counts["abandoned"] == 1, "the server noticed the hang-up")
    assert server.gate.waiting == 0
    server.release()
    assert server.gate.counts["served"] == 1  # only the holder: the abandoned decode never ran
    assert httpx.get(f"{url}/api/health", timeout=30).json()["jobs"]["abandoned"] == 1


# -- slow bodies ------------------------------------------------------------------------------------
def raw_exchange(port: int, head: bytes, pieces: list[bytes], pause_s: float) -> bytes:
    """Send a request head, then the body in pieces with pauses; return everything the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(head)
        for piece in pieces:
            if select.select([connection], [], [], 0)[0]:
                break  # the server has answered: stop sending (more bytes would only be reset)
            connection.sendall(piece)
            time.sleep(pause_s)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _upload_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("limits", "pause_s", "message"),
    [
        ({"body_idle_timeout_s": 0.3}, 0.0, "then nothing for 0.3 s"),  # one piece, then silence
        ({"body_idle_timeout_s": 5.0, "body_timeout_s": 0.5}, 0.15, "in 0.5 s, the limit for a whole body"),
    ],
    ids=["stalled", "trickled"],
)
def test_a_slow_body_is_408_and_the_connection_closed(
    web_model: str, limits: dict[str, float], pause_s: float, message: str
) -> None:
    app = create_app(Limits(**limits), preload=False)  # type: ignore[arg-type]
    start = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    pieces = [start] + ([b"\x89"] * 40 if pause_s else [])
    with running_server(app) as live:
        port = int(live.url.rsplit(":", 1)[1])
        answer = raw_exchange(port, _upload_head(f"/api/models/{web_model}/encode", 10_000), pieces, pause_s)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"connection: close" in head.lower()
        refusal = json.loads(body)
        assert (refusal["status"], refusal["code"]) == (408, "timeout")
        assert message in refusal["error"], refusal["error"]
        assert httpx.get(f"{live.url}/api/health", timeout=30).status_code == 200
