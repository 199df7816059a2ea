"""What the server refuses before doing work: big bodies, bombs, wrong content, too many jobs.

Uploads are judged by their bytes, never by their file name or declared content type: a PNG
called ``photo.latentz`` is still a PNG and is refused by the decoder with 415.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from latentz import codec, imaging
from latentz.codec.format import MAGIC as LATENTZ_MAGIC
from latentz.server.errors import ApiError

MULTIPART_OVERHEAD = 64 * 1024
"""Room for multipart boundaries and small form fields on top of the file itself."""

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


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuse request bodies over the limit with 413 before they are parsed or spooled to disk.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as it
    arrives and refused as soon as it crosses the limit.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    def _message(self, size: str) -> str:
        return (
            f"upload too large: the request body is {size} bytes, the limit is "
            f"{self.max_upload_bytes:,} bytes per file"
        )

    async def _refuse(self, send: Send, size: str) -> None:
        body = json.dumps(
            {"error": self._message(size), "code": "too_large", "status": 413, "limit": self.max_upload_bytes}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(send, f"{int(declared):,}")
            return
        received = 0
        overflowed = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    overflowed = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # The body parser turns our exception into its own 400; answer the 413 it really is.
            nonlocal started
            if overflowed:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._refuse(send, f"more than {self.max_body_bytes:,}")
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send, f"more than {self.max_body_bytes:,}")


class SecurityHeaders:
    """Cross-origin isolation on every response: the pages need it for WASM threads and fine timers."""

    HEADERS = (
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cross-origin-embedder-policy", b"require-corp"),
        (b"cross-origin-resource-policy", b"same-origin"),
        (b"x-content-type-options", b"nosniff"),
    )

    EXEMPT = ("/docs", "/redoc")
    """The OpenAPI viewers load their scripts from a CDN, which cross-origin isolation would block."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(self.EXEMPT):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", ())}
                extra = [(name, value) for name, value in self.HEADERS if name not in names]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


def sniff_image(data: bytes) -> str:
    """The image format the bytes actually hold, or a 415 that says what they look like instead."""
    if not data:
        raise ApiError(400, "the uploaded file is empty")
    for name, magic, offset in IMAGE_SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (name != "WEBP" or data[:4] == b"RIFF"):
            return name
    if data[: len(LATENTZ_MAGIC)] == LATENTZ_MAGIC:
        raise ApiError(
            415,
            "this is a .latentz file, not an image; POST it to /api/decode to get the image back",
            detected="latentz",
        )
    raise ApiError(
        415,
        f"not a supported image: the content is not {ACCEPTED_IMAGES} (judged by the bytes, not the file "
        f"name; it starts with {data[:8]!r})",
    )


def open_upload_image(data: bytes, max_pixels: int) -> Image.Image:
    """Sniff, check the pixel count from the header, then decode: 415, 413 or 400 on failure."""
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
    except codec.BadMagicError as error:
        detected = "image" if _looks_like_image(data) else "unknown"
        hint = " (it is an image: POST it to /api/models/{name}/encode)" if detected == "image" else ""
        raise ApiError(415, f"{error}{hint}", detected=detected) from None
    except codec.LatentzFormatError as error:
        raise ApiError(400, str(error)) from None
    return header


def _looks_like_image(data: bytes) -> bool:
    try:
        sniff_image(data)
    except ApiError:
        return False
    return True


class JobGate:
    """At most N inference jobs at once; the rest wait in line (first come, first served) and give
    up with 429 after a timeout.

    ONNX sessions run with one thread each, so more simultaneous jobs than cores only adds memory
    and context switches. The line is strictly FIFO (a freed slot is handed to the longest waiter,
    never grabbed by a newcomer), which keeps the tail latency of a burst close to its median.
    """

    def __init__(self, slots: int, timeout_s: float) -> None:
        self.slots = max(1, slots)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._free = self.slots
        self._waiting: deque[threading.Event] = deque()

    def _acquire(self) -> bool:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return True
            ticket = threading.Event()
            self._waiting.append(ticket)
        if ticket.wait(self.timeout_s):
            return True
        with self._lock:
            if ticket.is_set():  # the slot arrived just as the wait timed out
                return True
            self._waiting.remove(ticket)
            return False

    def _release(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()  # hand the slot over directly
            else:
                self._free += 1

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if not self._acquire():
            raise ApiError(
                429,
                f"server busy: all {self.slots} inference slots stayed taken for {self.timeout_s:g} s; retry",
            )
        try:
            yield
        finally:
            self._release()
