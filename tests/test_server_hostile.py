"""Hostile requests against the real server over real HTTP (issue 10's server cases).

Cross-site pages and DNS rebinding (403, 421), connections that never finish their headers, bodies
that never end after a 413, JSON answers rendered off the event loop, inputs that used to reach a
500, HEAD and Range, and what the health check tells strangers. Connection-level cases use raw
sockets over loopback; none asserts how fast anything is (the machine is shared): a closed
connection is seen as ``recv`` returning ``b""``, within generous socket timeouts.
"""

from __future__ import annotations

import contextlib
import io
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import REPO, LiveServer, make_digits, running_server
from PIL import Image
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from latentz import imaging, runtime
from latentz.server import Limits, create_app
from latentz.server.answers import render_json
from latentz.server.assets import WEB_DIR
from latentz.server.middleware import SecurityHeaders
from latentz.server.origins import normalise_host, normalise_origin
from latentz.server.registry import RESCAN_INTERVAL_S, ModelRegistry

SECURITY_HEADERS = {name.decode(): value.decode() for name, value in SecurityHeaders.HEADERS}
SOCKET_TIMEOUT_S = 30.0
"""How long a raw socket waits for the server; only ever reached when the server misbehaves."""
MAX_SENT_BEFORE_CLOSE = 64 * 1024 * 1024
"""A server that still reads after this much of a refused body is draining it."""


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def digit_png() -> bytes:
    return imaging.png_bytes(make_digits(1, seed=5)[0][0][:, :, None])


def port_of(live: LiveServer) -> int:
    return int(live.url.rsplit(":", 1)[1])


def connect(live: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port_of(live)), timeout=SOCKET_TIMEOUT_S)


def assert_error(response: httpx.Response, status: int, code: str, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert (body["status"], body["code"]) == (status, code), body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    return body


@contextlib.contextmanager
def server_with(**limits: object) -> Iterator[LiveServer]:
    """A server of its own (models loaded on first use) with these limits."""
    with running_server(create_app(Limits(**limits), preload=False)) as live:  # type: ignore[arg-type]
        yield live


def served_jobs(http: httpx.Client) -> int:
    return http.get("/api/health").json()["jobs"].get("served", 0)


# -- cross-site requests ------------------------------------------------------------------------
CROSS_SITE = {
    "evil-origin": {"Origin": "https://evil.example"},
    "fetch-site-cross-site": {"Sec-Fetch-Site": "cross-site"},
    "another-port-of-localhost": {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:3000"},
    "opaque-origin": {"Origin": "null"},
    "old-browser-other-port": {"Origin": "http://127.0.0.1:1"},
}


def network_requests(web_model: str, digit_png: bytes) -> list[tuple[str, str, dict]]:
    """One request of each kind that runs a network."""
    upload = {"files": {"file": ("d.png", digit_png)}}
    return [
        ("POST", f"/api/models/{web_model}/encode", upload),
        ("POST", f"/api/models/{web_model}/latent", upload),
        ("POST", f"/api/models/{web_model}/reconstruct", upload),
        ("POST", "/api/decode", {"files": {"file": ("d.latentz", b"LZ")}}),
        ("POST", "/api/read", {"files": {"file": ("d.latentz", b"LZ")}}),
        ("GET", f"/api/models/{web_model}/sample?count=2", {}),
        ("POST", f"/api/models/{web_model}/interpolate", {"json": {"start": [0.0] * 10, "end": [0.0] * 10}}),
    ]


@pytest.mark.parametrize("headers", CROSS_SITE.values(), ids=CROSS_SITE.keys())
def test_pages_of_other_sites_cannot_run_a_model(
    client: httpx.Client, web_model: str, digit_png: bytes, headers: dict[str, str]
) -> None:
    served = served_jobs(client)
    for method, url, kwargs in network_requests(web_model, digit_png):
        response = client.request(method, url, headers=headers, **kwargs)
        assert_error(response, 403, "cross_origin", "cross-site request refused", "--allow-origin")
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value
    assert served_jobs(client) == served  # nothing ran


def test_own_pages_and_scripts_still_run_models(
    live_server: LiveServer, client: httpx.Client, web_model: str, digit_png: bytes
) -> None:
    own = {"Origin": live_server.url}
    for headers in (
        {},  # curl, scripts
        {"Sec-Fetch-Site": "same-origin", **own},  # the app's own pages
        own,  # a browser without Sec-Fetch-Site, same origin
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
    ):
        encoded = client.post(
            f"/api/models/{web_model}/encode", files={"file": ("d.png", digit_png)}, headers=headers
        )
        assert encoded.status_code == 200, (headers, encoded.text)
        sampled = client.get(f"/api/models/{web_model}/sample?count=1", headers=headers)
        assert sampled.status_code == 200, (headers, sampled.text)


def test_links_from_other_sites_still_open_the_pages(client: httpx.Client, web_model: str) -> None:
    cross = {"Sec-Fetch-Site": "cross-site"}
    for path in ("/", "/codec", "/static/style.css", f"/api/models/{web_model}", "/api/health"):
        assert client.get(path, headers=cross).status_code == 200, path


def test_an_allowed_origin_may_run_models_and_others_still_may_not(web_model: str, digit_png: bytes) -> None:
    with (
        server_with(allowed_origins=("https://app.example:443/",)) as live,
        httpx.Client(base_url=live.url, timeout=60) as http,
    ):
        allowed = {"Origin": "https://APP.example", "Sec-Fetch-Site": "cross-site"}
        response = http.post(
            f"/api/models/{web_model}/encode", files={"file": ("d.png", digit_png)}, headers=allowed
        )
        assert response.status_code == 200, response.text
        other = {"Origin": "https://app.example.evil", "Sec-Fetch-Site": "cross-site"}
        refused = http.post(
            f"/api/models/{web_model}/encode", files={"file": ("d.png", digit_png)}, headers=other
        )
        assert_error(refused, 403, "cross_origin")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://App.Example.org", "https://app.example.org"),
        ("https://app.example.org:443/", "https://app.example.org"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_allowed_origins_are_compared_as_browsers_send_them(value: str, expected: str) -> None:
    assert normalise_origin(value) == expected


@pytest.mark.parametrize(
    "value", ["app.example.org", "ftp://app.example.org", "https://app.example.org/page"]
)
def test_an_allowed_origin_must_be_an_origin(value: str) -> None:
    with pytest.raises(ValueError, match="origin"):
        normalise_origin(value)


def test_allowed_hosts_are_compared_by_name() -> None:
    assert normalise_host("Latentz.Example.org:443") == "latentz.example.org"
    assert normalise_host("[::1]:8000") == "::1"
    assert normalise_host("*") == "*"
    for value in ("https://latentz.example.org", "user@host", "host:port"):
        with pytest.raises(ValueError, match="not a host name"):
            normalise_host(value)


# -- the Host header (DNS rebinding) --------------------------------------------------------------
def test_a_host_name_this_server_does_not_answer_to_is_421(
    live_server: LiveServer, client: httpx.Client, web_model: str, digit_png: bytes
) -> None:
    served = served_jobs(client)
    evil = {"Host": "evil.example:8000"}
    assert_error(
        client.get("/api/health", headers=evil), 421, "unknown_host", "evil.example", "--allowed-host"
    )
    assert_error(client.get("/codec", headers=evil), 421, "unknown_host")
    encode = client.post(
        f"/api/models/{web_model}/encode", files={"file": ("d.png", digit_png)}, headers=evil
    )
    assert_error(encode, 421, "unknown_host")
    assert served_jobs(client) == served
    port = port_of(live_server)
    for host in (
        "localhost",
        f"localhost:{port}",
        "127.0.0.1",
        f"127.0.0.1:{port}",
        "[::1]",
        f"[::1]:{port}",
    ):
        assert client.get("/api/health", headers={"Host": host}).status_code == 200, host
    assert client.get("/api/health", headers={"Host": "192.168.1.20:8000"}).status_code == 200  # an address


def test_the_operator_adds_host_names(web_model: str) -> None:
    with (
        server_with(allowed_hosts=("Latentz.Example.org:8443",)) as live,
        httpx.Client(base_url=live.url) as http,
    ):
        assert http.get("/api/health", headers={"Host": "latentz.example.org"}).status_code == 200
        assert http.get("/api/health", headers={"Host": "LATENTZ.example.org:443"}).status_code == 200
        assert_error(http.get("/api/health", headers={"Host": "other.example.org"}), 421, "unknown_host")
    with server_with(allowed_hosts=("*",)) as live, httpx.Client(base_url=live.url) as http:
        assert http.get("/api/health", headers={"Host": "anything.example"}).status_code == 200


# -- connections that never finish their headers -------------------------------------------------
def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout fails the test)."""
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_response(connection: socket.socket) -> bytes:
    """One whole response (head and Content-Length body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += connection.recv(65536)
    assert len(body) == length
    return head + b"\r\n\r\n" + body


def trickle_until_answered(connection: socket.socket, head: bytes) -> None:
    """Send ``head`` a byte at a time, 0.05 s apart, until the server answers or closes."""
    give_up = time.monotonic() + SOCKET_TIMEOUT_S
    for byte in head:
        if select.select([connection], [], [], 0.05)[0]:
            return
        assert time.monotonic() < give_up, f"the connection is still open after {SOCKET_TIMEOUT_S:g} s"
        connection.sendall(bytes([byte]))
    raise AssertionError("the whole head was sent: the test needs a longer one")


ENDLESS_HEAD = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 20_000


def test_a_connection_that_never_sends_its_headers_is_closed() -> None:
    with server_with(header_timeout_s=0.5) as live:
        with connect(live) as silent:
            assert read_until_closed(silent) == b""  # closed without a word: it never spoke either
        with connect(live) as trickling:
            trickle_until_answered(trickling, ENDLESS_HEAD)
            answer = read_until_closed(trickling)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"connection: close" in head.lower()
        for name, value in SECURITY_HEADERS.items():
            assert f"{name}: {value}".encode() in head
        refusal = json.loads(body)
        assert (refusal["status"], refusal["code"]) == (408, "timeout")
        assert "0.5 s" in refusal["error"]
        assert httpx.get(f"{live.url}/api/health", timeout=30).status_code == 200


def test_a_kept_alive_connection_trickling_its_next_request_is_closed() -> None:
    with server_with(header_timeout_s=0.5) as live, connect(live) as connection:
        connection.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = read_response(connection)
        assert first.startswith(b"HTTP/1.1 200 "), first[:200]
        trickle_until_answered(connection, ENDLESS_HEAD)
        assert read_until_closed(connection).startswith(b"HTTP/1.1 408 ")


def test_a_head_sent_in_pieces_within_the_timeout_is_served() -> None:
    with server_with(header_timeout_s=20) as live:
        with connect(live) as connection:
            for piece in (
                b"GET /api/health HT",
                b"TP/1.1\r\nHost: 127.0.0.1\r\n",
                b"Connection: close\r\n\r\n",
            ):
                connection.sendall(piece)
            answer = read_until_closed(connection)
        assert answer.startswith(b"HTTP/1.1 200 ")


def test_a_request_the_http_layer_cannot_parse_is_a_json_400_with_the_security_headers(
    live_server: LiveServer,
) -> None:
    for request in (
        b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n",
        b"NOT AN HTTP REQUEST\r\n\r\n",
    ):
        with connect(live_server) as connection:
            connection.sendall(request)
            head, _, body = read_until_closed(connection).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), head
        for name, value in SECURITY_HEADERS.items():
            assert f"{name}: {value}".encode() in head
        assert json.loads(body)["code"] == "bad_request"


# -- bodies refused before they are read ----------------------------------------------------------
def push_until_closed(connection: socket.socket, piece: bytes) -> tuple[bytes, int, bool]:
    """Keep sending ``piece`` while reading the answer, until the server closes or the cap is hit.

    Returns the answer, the bytes sent, and whether the server closed its side (FIN) or reset.
    """
    answer, sent, closed = b"", 0, False
    while sent < MAX_SENT_BEFORE_CLOSE:
        readable, writable, _ = select.select(
            [connection], [] if closed else [connection], [], SOCKET_TIMEOUT_S
        )
        if not readable and not writable:
            raise AssertionError(f"the server neither read nor closed after {sent:,} bytes")
        try:
            if readable:
                data = connection.recv(65536)
                closed = closed or not data
                answer += data
            if writable:
                sent += connection.send(piece)
        except (BrokenPipeError, ConnectionResetError):
            return answer, sent, True
        if closed and not writable:
            return answer, sent, True
    return answer, sent, False


def upload_head(path: str, length: int | None) -> bytes:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("framing", ["chunked", "declared"])
def test_after_a_413_the_server_closes_instead_of_reading_the_rest(
    live_server: LiveServer, web_model: str, framing: str
) -> None:
    chunk = bytes(65536)
    start = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    if framing == "chunked":  # a body that never ends
        head = upload_head(f"/api/models/{web_model}/encode", None) + f"{len(start):x}\r\n".encode()
        head, piece = head + start + b"\r\n", b"10000\r\n" + chunk + b"\r\n"
    else:  # declares 100 GB: refused at once, and what follows is not read either
        head, piece = upload_head(f"/api/models/{web_model}/encode", 100 * 10**9) + start, chunk
    with connect(live_server) as connection:
        connection.sendall(head)
        answer, sent, closed = push_until_closed(connection, piece)
    assert closed, f"still reading after {sent:,} bytes"
    response_head, _, body = answer.partition(b"\r\n\r\n")
    assert response_head.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b"connection: close" in response_head.lower()
    assert json.loads(body)["code"] == "too_large"
    assert httpx.get(f"{live_server.url}/api/health", timeout=30).status_code == 200


def test_a_cross_site_upload_is_refused_unread_and_the_connection_closed(
    live_server: LiveServer, web_model: str
) -> None:
    head = upload_head(f"/api/models/{web_model}/encode", 10**9).replace(
        b"\r\n\r\n", b"\r\nOrigin: https://evil.example\r\n\r\n"
    )
    with connect(live_server) as connection:
        connection.sendall(head)
        answer, sent, closed = push_until_closed(connection, bytes(65536))
    assert closed, f"still reading after {sent:,} bytes"
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:300]
    assert b"connection: close" in answer.partition(b"\r\n\r\n")[0].lower()


async def answers_without_reading(scope: Scope, receive: Receive, send: Send) -> None:
    """An ASGI app that answers every request at once, reads no body and never says Connection: close."""
    if scope["type"] == "lifespan":
        await receive()  # startup
        await send({"type": "lifespan.startup.complete"})
        await receive()  # shutdown
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_the_protocol_closes_rather_than_drains_whatever_the_app_says(web_model: str) -> None:
    with running_server(answers_without_reading) as live, connect(live) as connection:
        connection.sendall(upload_head("/anything", None))
        answer, sent, closed = push_until_closed(connection, b"10000\r\n" + bytes(65536) + b"\r\n")
    assert closed, f"still reading after {sent:,} bytes"
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


# -- JSON answers are rendered off the event loop --------------------------------------------------
def test_big_json_answers_are_rendered_in_worker_threads(
    live_server: LiveServer,
    client: httpx.Client,
    web_model: str,
    digit_png: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every response's bytes are made in Response.__init__; record which thread made each."""
    made: list[tuple[int, bytes]] = []
    original = Response.__init__

    def recording_init(self: Response, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        made.append((threading.get_ident(), bytes(self.body)))

    monkeypatch.setattr(Response, "__init__", recording_init)
    model = runtime.load(web_model)
    blob = model.compress(model.prepare(digit_png).image)
    latent = client.post(f"/api/models/{web_model}/latent", files={"file": ("d.png", digit_png)})
    read = client.post("/api/read", files={"file": ("d.latentz", blob)})
    sample = client.get(f"/api/models/{web_model}/sample?count=4")
    report = client.post(f"/api/models/{web_model}/encode?format=json", files={"file": ("d.png", digit_png)})
    monkeypatch.undo()
    assert {latent.status_code, read.status_code, sample.status_code, report.status_code} == {200}
    event_loop = live_server.thread.ident
    answers = [
        (thread, body) for thread, body in made if body in (latent.content, read.content, sample.content)
    ]
    answers += [(thread, body) for thread, body in made if body == report.content]
    assert len(answers) == 4, "each answer was made once"
    assert all(thread != event_loop for thread, _ in answers)


def test_render_json_writes_latents_exactly_as_before() -> None:
    values = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    content = {"model": "m", "latent": values, "latents": [values[:3], values[3:5]], "note": None, "é": 1.5}
    expected = json.dumps(
        {
            "model": "m",
            "latent": [float(v) for v in values],
            "latents": [[float(v) for v in values[:3]], [float(v) for v in values[3:5]]],
            "note": None,
            "é": 1.5,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()
    assert render_json(content) == expected
    with pytest.raises(ValueError):
        render_json({"latent": np.array([np.nan], dtype=np.float32)})


# -- inputs that used to reach a 500 --------------------------------------------------------------
def tiff_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    return buffer.getvalue()


def test_a_lab_tiff_is_a_clear_400_for_a_grey_model(client: httpx.Client, web_model: str) -> None:
    digit = Image.fromarray(make_digits(1, seed=3)[0][0]).convert("RGB")
    lab = tiff_bytes(digit.convert("LAB"))
    for endpoint in ("encode", "latent", "reconstruct"):
        response = client.post(f"/api/models/{web_model}/{endpoint}", files={"file": ("lab.tif", lab)})
        assert_error(response, 400, "bad_request", "LAB colour mode", "RGB or greyscale")


def test_a_big_endian_16_bit_tiff_is_encoded(client: httpx.Client, web_model: str) -> None:
    digit = make_digits(1, seed=3)[0][0].astype(np.uint16) * 257
    image = Image.frombytes("I;16B", (28, 28), digit.astype(">u2").tobytes())
    response = client.post(f"/api/models/{web_model}/encode", files={"file": ("deep.tif", tiff_bytes(image))})
    assert response.status_code == 200, response.text


def test_latents_beyond_float32_are_400(client: httpx.Client, web_model: str) -> None:
    url = f"/api/models/{web_model}/interpolate"
    for body in ({"start": [1e39] * 10, "end": [0.0] * 10}, {"start": [0.0] * 10, "end": [-1e39] * 10}):
        assert_error(client.post(url, json=body), 400, "bad_request", "float32")
    largest = float(np.finfo(np.float32).max)
    for method in ("linear", "slerp"):
        body = {"start": [largest] * 10, "end": [-largest] * 10, "method": method}
        assert client.post(url, json=body).status_code in (200, 400)


def test_file_names_the_file_system_refuses_are_404_without_the_install_path(client: httpx.Client) -> None:
    for path in ("/static/a%00", "/static/js/%00.js", "/static/" + "a" * 5000, "/static/" + "a/" * 3000):
        body = assert_error(client.get(path), 404, "not_found", "no such file")
        assert str(WEB_DIR) not in body["error"] and str(REPO) not in body["error"]
        assert len(body["error"]) < 200


def test_a_500_carries_the_security_headers_and_the_error_shape() -> None:
    app = create_app(preload=False)

    @app.get("/api/fails")
    def fails() -> None:
        raise RuntimeError("a bug the test planted")

    with running_server(app) as live:
        response = httpx.get(f"{live.url}/api/fails", timeout=30)
    assert_error(response, 500, "internal_error", "a bug the test planted")
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value


# -- HEAD, Range ----------------------------------------------------------------------------------
def test_head_answers_files_and_pages_with_their_headers(client: httpx.Client, web_model: str) -> None:
    for path in (
        "/",
        "/codec",
        "/static/style.css",
        "/vendor/onnxruntime-web/ort.wasm.min.mjs",
        f"/api/models/{web_model}/files/decoder.onnx",
    ):
        for encoding in ("identity", "gzip"):  # the headers of the representation a GET would send
            full = client.get(path, headers={"Accept-Encoding": encoding})
            head = client.head(path, headers={"Accept-Encoding": encoding})
            assert head.status_code == 200, (path, head.status_code)
            assert head.content == b""
            assert head.headers["content-length"] == full.headers["content-length"]
            assert head.headers.get("content-encoding") == full.headers.get("content-encoding")
            assert head.headers["content-type"] == full.headers["content-type"]
            assert head.headers["etag"] == full.headers["etag"]
        assert int(full.headers["content-length"]) < len(full.content)  # gzip: the wire has fewer bytes


def test_range_errors_are_json(client: httpx.Client) -> None:
    size = len(client.get("/static/style.css").content)
    beyond = client.get("/static/style.css", headers={"Range": f"bytes={size + 10}-"})
    assert_error(beyond, 416, "range_not_satisfiable", f"{size:,} bytes")
    assert beyond.headers["content-range"] == f"bytes */{size}"
    assert_error(client.get("/static/style.css", headers={"Range": "lines=1-2"}), 400, "bad_request", "Range")
    part = client.get("/static/style.css", headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and len(part.content) == 10


# -- what the health check and the errors tell strangers -------------------------------------------
def strings_in(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def test_health_shows_no_paths_and_no_process_id(client: httpx.Client, tmp_path: Path) -> None:
    import os

    health = client.get("/api/health").json()
    assert "process" not in health
    assert isinstance(health["worker"], str) and str(os.getpid()) != health["worker"]
    for text in strings_in(health):
        assert str(REPO) not in text and not text.startswith("/"), text
    missing = create_app(preload=False, node_modules=tmp_path)
    with running_server(missing) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        web_runtime = http.get("/api/health").json()["web_runtime"]
        assert "npm ci" in web_runtime["error"] and str(tmp_path) not in web_runtime["error"]
        vendor = http.get("/vendor/onnxruntime-web/ort.wasm.min.mjs").json()
        assert "npm ci" in vendor["error"] and str(tmp_path) not in vendor["error"]


def test_a_broken_bundle_is_reported_by_name_not_by_path(
    tmp_path: Path, web_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from latentz.bundle import read_bundle

    broken = tmp_path / "models" / "broken"
    shutil.copytree(read_bundle(web_model).path, broken)
    (broken / "config.json").write_text("{not json")
    monkeypatch.setenv("LATENTZ_MODELS", str(tmp_path / "models"))
    with running_server(create_app(preload=False)) as live:
        problems = httpx.get(f"{live.url}/api/health", timeout=30).json()["problems"]
    assert "broken" in problems and "unreadable bundle" in problems["broken"]
    assert str(tmp_path) not in problems["broken"], problems


def test_wrong_content_is_explained_in_words(client: httpx.Client, web_model: str, digit_png: bytes) -> None:
    model = runtime.load(web_model)
    blob = model.compress(model.prepare(digit_png).image)
    cases = [
        (f"/api/models/{web_model}/encode", blob, "this is a .latentz file, not an image: decode it"),
        ("/api/decode", digit_png, "this is a PNG image, not a .latentz file: encode it"),
        (f"/api/models/{web_model}/encode", b"%PDF-1.7 ...", "it looks like a PDF document"),
        (
            "/api/decode",
            b"<!DOCTYPE html><html>",
            'it looks like HTML, XML or SVG and starts with "<!DOCTYPE ht"',
        ),
        (f"/api/models/{web_model}/encode", bytes(range(200, 216)), "c8 c9 ca cb cc cd ce cf (hex)"),
    ]
    for url, data, fragment in cases:
        message = assert_error(client.post(url, files={"file": ("x", data)}), 415, "unsupported_media")[
            "error"
        ]
        assert fragment in message, message
        assert (
            "b'" not in message and 'b"' not in message and "/api/" not in message and "POST" not in message
        )


# -- the bundle folders are not rescanned for every unknown name -----------------------------------
def test_unknown_names_rescan_the_bundles_at_most_once_per_interval(
    tmp_path: Path, web_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from latentz.bundle import read_bundle

    monkeypatch.setenv("LATENTZ_MODELS", str(tmp_path))
    now = [1000.0]
    registry = ModelRegistry(clock=lambda: now[0])
    registry.refresh()
    assert "arrived" not in registry.names()
    shutil.copytree(read_bundle(web_model).path, tmp_path / "arrived")
    now[0] += RESCAN_INTERVAL_S / 2
    for _ in range(3):  # within the interval: not rescanned, however many requests ask
        with pytest.raises(Exception, match="no model named 'arrived'"):
            registry.info("arrived")
    now[0] += RESCAN_INTERVAL_S
    assert registry.info("arrived").name == "arrived"  # new bundles still appear without a restart
    with pytest.raises(Exception, match="no model named 'nope'"):
        registry.info("nope")
