"""What the server refuses before doing work: big bodies, bombs, wrong content, too many jobs.

Uploads are judged by their bytes, never by their file name or declared content type: a PNG
called ``photo.latentz`` is still a PNG and is refused by the decoder with 415.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
import warnings
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from PIL import Image
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from latentz import codec, imaging
from latentz.codec.format import MAGIC as LATENTZ_MAGIC
from latentz.codec.limits import SizeLimits
from latentz.server.errors import ApiError, ClientGone

CLOSE = (b"connection", b"close")
MULTIPART_OVERHEAD = 64 * 1024
"""Room for multipart boundaries and small form fields on top of the file itself."""
MAX_JSON_BYTES = 4 * 1024 * 1024
"""Largest JSON body (interpolate: two latents, a few thousand numbers). JSON is parsed in the event
loop, where a 12 MiB body would stall every other request for about 0.2 s."""

IMAGE_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    # (format, magic bytes, offset of the magic)
    ("JPEG", b"\xff\xd8\xff", 0),
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("GIF", b"GIF87a", 0),
    ("GIF", b"GIF89a", 0),
    ("WEBP", b"WEBP", 8),
    ("BMP", b"BM", 0),
    ("TIFF", b"II*\x00", 0),
    ("TIFF", b"MM\x00*", 0),
)
ACCEPTED_IMAGES = "JPEG, PNG, WebP, GIF, BMP or TIFF"


@dataclass(frozen=True)
class Limits:
    """The server's refusals, in one place so the docs, the errors and the tests agree."""

    max_upload_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 24_000_000
    max_spatial_side: int = 1024
    max_samples: int = 64
    max_interpolation_steps: int = 32
    max_concurrent_jobs: int = 4
    queue_timeout_s: float = 30.0
    max_waiting_per_client: int = 64
    """Requests one client (IP address) may have waiting for a slot; more are refused with 429 at once."""
    body_idle_timeout_s: float = 30.0
    """Longest pause allowed between two pieces of a request body (slow-body / slowloris clients)."""
    body_timeout_s: float = 300.0
    """Longest a whole request body may take to arrive (16 MiB at 56 KB/s)."""
    header_timeout_s: float = 10.0
    """Longest a connection may take to send a complete request head (request line and headers)."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names answered besides IP addresses and ``localhost`` (``*``: any); others get 421."""
    allowed_origins: tuple[str, ...] = ()
    """Other sites (``scheme://host[:port]``) whose pages may run the models; others get 403."""

    def __post_init__(self) -> None:
        # JSON (how the limits reach `latentz serve`'s workers) has lists, not tuples.
        object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))

    def sizes(self) -> SizeLimits:
        """The size policy every encode and decode here runs under: what encode scales an upload
        down to is also the most a .latentz file may declare, so the server decodes whatever it
        encodes and nothing bigger."""
        return SizeLimits(
            max_image_pixels=self.max_pixels,
            max_coded_pixels=self.max_spatial_side**2,
            max_coded_side=self.max_spatial_side,
            raise_with="`latentz serve --max-spatial-side` raises it",
        )


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
        received = 0
        body_complete = not has_body
        refusal: _BodyRefused | None = None
        started = False
        deadline = time.monotonic() + self.total_timeout_s

        async def guarded_receive() -> Message:
            nonlocal received, body_complete, refusal
            if body_complete:
                return await receive()
            wait_s = min(self.idle_timeout_s, max(0.0, deadline - time.monotonic()))
            try:
                message = await asyncio.wait_for(receive(), timeout=wait_s)
            except TimeoutError:
                refusal = self._too_slow(received, idle=wait_s == self.idle_timeout_s)
                raise refusal from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    refusal = self._too_large(f"more than {max_bytes:,}", is_json)
                    raise refusal
                body_complete = not message.get("more_body", False)
            else:
                body_complete = True  # a disconnect: nothing more will come
            return message

        async def guarded_send(message: Message) -> None:
            # The body parser turns our exception into its own 400; answer what it really is.
            nonlocal started
            if refusal is not None:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._refuse(send, refusal)
                return
            if message["type"] == "http.response.start" and not started:
                started = True
                if not body_complete:  # answered before the body was read: do not read the rest
                    names = {name.lower() for name, _ in message.get("headers", ())}
                    if b"connection" not in names:
                        message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except _BodyRefused as error:
            if not started:
                await self._refuse(send, error)


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


OTHER_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    # what people upload by mistake, named in the 415 (format, magic bytes, offset of the magic)
    ("a PDF document", b"%PDF", 0),
    ("a ZIP archive", b"PK\x03\x04", 0),
    ("a gzip file", b"\x1f\x8b", 0),
    ("an ICO icon", b"\x00\x00\x01\x00", 0),
    ("a HEIF/HEIC or AVIF image", b"ftyp", 4),
    ("a JPEG XL image", b"\xff\x0a", 0),
)


def describe_content(data: bytes) -> str:
    """What the first bytes of a file look like, in words (for people, never a Python bytes repr)."""
    for name, magic, offset in OTHER_SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return f"it looks like {name}"
    head = data[:16]
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    printable = all(32 <= byte < 127 or byte in b"\t\r\n" for byte in text)
    if text[:1] in (b"<", b"{", b"[") or (text and printable):
        kind = {b"<": "HTML, XML or SVG", b"{": "JSON", b"[": "JSON"}.get(text[:1], "text")
        preview = "".join(chr(byte) if 32 <= byte < 127 else " " for byte in text[:12]).strip()
        return f'it looks like {kind} and starts with "{preview}"'
    return "its first bytes are " + " ".join(f"{byte:02x}" for byte in data[:8]) + " (hex)"


def sniff_image(data: bytes) -> str:
    """The image format the bytes actually hold, or a 415 that says what they look like instead."""
    if not data:
        raise ApiError(400, "the uploaded file is empty")
    for name, magic, offset in IMAGE_SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (name != "WEBP" or data[:4] == b"RIFF"):
            return name
    if data[: len(LATENTZ_MAGIC)] == LATENTZ_MAGIC:
        raise ApiError(
            415, "this is a .latentz file, not an image: decode it instead of encoding it", detected="latentz"
        )
    raise ApiError(
        415,
        f"not a supported image: the content is not {ACCEPTED_IMAGES} (judged by the bytes, not the file "
        f"name; {describe_content(data)})",
    )


def check_upload_image(data: bytes, max_pixels: int) -> str:
    """Sniff the format and read the size from the header (cheap: no pixels are decoded).

    415, 413 or 400 on failure; the format name otherwise. Run before a request waits for an
    inference slot, so wrong or oversized uploads never queue.
    """
    sniffed = sniff_image(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header_only:  # reads the header, not the pixels
                width, height = header_only.size
    except Image.DecompressionBombError as error:
        message = f"image refused before decoding as a decompression bomb ({error})"
        raise ApiError(413, message, limit=max_pixels) from None
    except Exception as error:  # Pillow raises many types for broken headers
        raise ApiError(400, f"corrupt {sniffed} image: its header cannot be read ({error})") from None
    if width * height > max_pixels:
        raise ApiError(
            413,
            f"image is {width}x{height} = {width * height:,} pixels, more than the {max_pixels:,} allowed "
            "(refused before decoding)",
            width=width,
            height=height,
            limit=max_pixels,
        )
    return sniffed


def open_upload_image(data: bytes, max_pixels: int) -> Image.Image:
    """Check the upload (`check_upload_image`), then decode it: 415, 413 or 400 on failure."""
    sniffed = check_upload_image(data, max_pixels)
    try:
        return imaging.open_image(data, max_pixels=max_pixels)
    except imaging.ImageError as error:
        raise ApiError(400, f"corrupt {sniffed} image: {error}".replace("<bytes>: ", "")) from None


def parse_latentz(data: bytes) -> codec.Header:
    """Check a .latentz upload's container (magic, version, checksum) and return its header."""
    if not data:
        raise ApiError(400, "the uploaded file is empty")
    try:
        header, _ = codec.unpack(data)
    except codec.UnsupportedVersionError as error:
        raise ApiError(415, str(error), detected="latentz") from None
    except codec.BadMagicError:
        image = _image_format(data)
        if image is not None:
            message = f"this is a {image} image, not a .latentz file: encode it instead of decoding it"
            raise ApiError(415, message, detected="image") from None
        message = f"not a .latentz file: it does not start with the letters LZ ({describe_content(data)})"
        raise ApiError(415, message, detected="unknown") from None
    except codec.LatentzFormatError as error:
        raise ApiError(400, str(error)) from None
    return header


def _image_format(data: bytes) -> str | None:
    """The supported image format the bytes hold, if any."""
    try:
        return sniff_image(data)
    except ApiError:
        return None


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
