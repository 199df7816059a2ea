"""Everything the browser downloads: the pages, the npm files they use, and each model's networks.

No build step: the pages are plain ES modules. Their npm dependencies (onnxruntime-web for the
pages, swagger-ui-dist for ``/docs``) come from ``node_modules`` of the repository checkout
(``npm ci`` installs the versions pinned in package-lock.json); set ``LATENTZ_NODE_MODULES`` to
use another folder. Only the files named in `ORT` and `SWAGGER_UI` are served.

How files travel (a first visit to the explorer was 21 MB, and every visit downloaded it again):

- **Compressed once.** Text, WebAssembly, JSON and ONNX files are gzipped once per file version
  (`Payload`, kept in memory for the life of the process) and sent to browsers that accept gzip,
  with ``Vary: Accept-Encoding``. A compressed answer carries ``X-Uncompressed-Length``, the
  size its stream yields once decoded, so a page can show truthful progress (``Content-Length``
  counts the compressed bytes). A ``Range`` request gets the plain bytes.
- **Versioned URLs are cached for good.** ``/vendor/{package}/{version}/{file}`` and
  ``/api/models/{name}/files/{version}/{file}`` (the version is the file's content digest, so
  it changes whenever the bytes do) are ``immutable`` for a year: a repeat visit downloads
  nothing. The pages learn those URLs from the import map the server writes into each page
  (`render_page`) and from ``/api/models``. Pages and unversioned URLs are revalidated
  (``no-cache`` and an ``ETag``: a repeat visit costs a 304).
- **Lean networks for the browser.** `model_files.ModelFiles` offers, beside a bundle's own ONNX files,
  copies with int8 or float16 weights (`latentz.browser_models`), each only if its outputs stay
  within the module's tolerance of the original's.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, Response
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

import latentz
from latentz.server.errors import ApiError

log = logging.getLogger("latentz.server")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
PAGES = {"": "index.html", "codec": "codec.html", "receiver": "receiver.html", "explorer": "explorer.html"}

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
COMPRESSIBLE = {".html", ".js", ".mjs", ".css", ".json", ".wasm", ".svg", ".onnx"}
GZIP_LEVEL = 6
"""zlib's default: level 9 makes onnxruntime-web's 14.2 MB wasm only 0.4% smaller (3.65 vs 3.67 MB)
for 60% more time, paid once per process."""
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
UNCOMPRESSED_LENGTH = "X-Uncompressed-Length"


@dataclass(frozen=True)
class VendorPackage:
    """An npm package the pages use, and the only files of it the server hands out."""

    name: str
    folder: str
    files: tuple[str, ...]


ORT = VendorPackage(
    "onnxruntime-web",
    "dist",
    ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
)
"""The WebAssembly backend (SIMD + threads) of onnxruntime-web: all the pages need of it."""
SWAGGER_UI = VendorPackage("swagger-ui-dist", "", ("swagger-ui-bundle.js", "swagger-ui.css"))
"""The OpenAPI viewer at /docs (FastAPI's default loads it from a CDN: blank offline)."""
ORT_PACKAGE = ORT.name
ORT_FILES = ORT.files


@dataclass(frozen=True)
class WebRuntime:
    """Where an npm package was found, or why it was not.

    ``error`` is for anyone (the health check, a 404): it names no folder of this machine;
    ``detail`` adds where it looked, for the server's log and the operator's terminal.
    """

    dist: Path | None
    version: str | None
    error: str | None
    detail: str | None = None
    package: VendorPackage = ORT

    def as_json(self) -> dict[str, object]:
        return {
            "available": self.dist is not None,
            "package": self.package.name,
            "version": self.version,
            "error": self.error,
        }

    def url(self, name: str) -> str:
        """The file's URL: with the package's version in it (cached for good) when the version is known."""
        version = f"{self.version}/" if self.version else ""
        return f"/vendor/{self.package.name}/{version}{name}"


def candidate_node_modules() -> list[Path]:
    """$LATENTZ_NODE_MODULES, then the checkout this (editable) package lives in, then the cwd."""
    candidates = []
    if os.environ.get("LATENTZ_NODE_MODULES"):
        candidates.append(Path(os.environ["LATENTZ_NODE_MODULES"]))
    package_dir = Path(latentz.__file__).resolve().parent
    candidates.append(package_dir.parent.parent / "node_modules")  # <repo>/src/latentz -> <repo>
    candidates.append(Path.cwd() / "node_modules")
    return candidates


def find_package(package: VendorPackage, node_modules: Path | None = None) -> WebRuntime:
    candidates = [node_modules] if node_modules is not None else candidate_node_modules()
    for folder in candidates:
        dist = folder / package.name / package.folder
        if all((dist / name).is_file() for name in package.files):
            version = None
            with contextlib.suppress(OSError, ValueError, AttributeError):
                version = json.loads((folder / package.name / "package.json").read_text()).get("version")
            if not isinstance(version, str) or not re.fullmatch(r"[0-9A-Za-z.+-]{1,40}", version):
                version = None
            return WebRuntime(dist=dist, version=version, error=None, package=package)
    looked = ", ".join(str(folder) for folder in candidates)
    advice = "run `npm ci` in the latentz repository (or `make run`), or set LATENTZ_NODE_MODULES"
    first = f"{package.name}/{package.folder + '/' if package.folder else ''}{package.files[0]}"
    return WebRuntime(
        dist=None,
        version=None,
        error=f"{package.name} is not installed on this server; {advice}",
        detail=f"{package.name} is not installed (looked for {first} in {looked}); {advice}",
        package=package,
    )


def find_web_runtime(node_modules: Path | None = None) -> WebRuntime:
    return find_package(ORT, node_modules)


# -- payloads: a file's bytes as served, compressed once ---------------------------------------------
@dataclass(frozen=True)
class Payload:
    """One version of a file: its digest (for the ETag and URL version) and its gzipped bytes.

    The plain bytes are read from ``path`` when there is one (so Range requests work and a 14 MB
    file is not held twice); otherwise they are ``data`` (a rendered page, a lean network).
    """

    media_type: str
    size: int
    digest: str
    gzip: bytes | None
    path: Path | None = None
    data: bytes | None = None

    @classmethod
    def of(cls, data: bytes, media_type: str, path: Path | None = None, compress: bool = True) -> Payload:
        packed = None
        if compress and len(data) >= 512:
            packed = gzip.compress(data, GZIP_LEVEL, mtime=0)
            if len(packed) >= 0.95 * len(data):
                packed = None  # not worth a Content-Encoding
        return cls(
            media_type=media_type,
            size=len(data),
            digest=hashlib.sha256(data).hexdigest(),
            gzip=packed,
            path=path,
            data=None if path is not None else data,
        )

    @property
    def version(self) -> str:
        """What a versioned URL carries: 16 hex digits of the content's SHA-256."""
        return self.digest[:16]


K = TypeVar("K")
V = TypeVar("V")


class Memo:
    """Values computed once per key and stamp (a file's mtime and size); a new stamp recomputes.

    Concurrent askers for the same key wait for one computation instead of each doing it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[Any, tuple[Any, Any]] = {}
        self._key_locks: dict[Any, threading.Lock] = {}

    def get(self, key: K, stamp: object, compute: Callable[[], V]) -> V:
        with self._lock:
            known = self._values.get(key)
            if known is not None and known[0] == stamp:
                return known[1]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                known = self._values.get(key)
            if known is not None and known[0] == stamp:
                return known[1]
            value = compute()
            with self._lock:
                self._values[key] = (stamp, value)
            return value


PAYLOADS = Memo()
"""Per process, shared by every app in it: a file is compressed once however many apps serve it."""


def file_stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def media_type_of(path: Path | str) -> str:
    return MEDIA_TYPES.get(Path(path).suffix.lower(), "application/octet-stream")


def file_version(path: Path) -> str:
    """The version a file's URL carries (`Payload.version`), without compressing it."""
    return PAYLOADS.get(("version", str(path)), file_stamp(path), lambda: _sha256_file(path)[:16])


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_payload(path: Path) -> Payload:
    """The file's payload, made when the file is first served (and again after it changes)."""
    suffix = path.suffix.lower()
    return PAYLOADS.get(
        ("file", str(path)),
        file_stamp(path),
        lambda: Payload.of(
            path.read_bytes(), media_type_of(path), path=path, compress=suffix in COMPRESSIBLE
        ),
    )


# -- answering ---------------------------------------------------------------------------------------
def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header admits gzip (``gzip;q=0`` refuses it, ``*`` admits it)."""
    qualities: dict[str, float] = {}
    for part in (accept_encoding or "").split(","):
        coding, *parameters = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if coding:
            qualities[coding.lower()] = quality
    for coding in ("gzip", "x-gzip", "*"):
        if coding in qualities:
            return qualities[coding] > 0
    return False


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110's weak comparison of If-None-Match (a list, or ``*``) with the representation's ETag."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == bare for candidate in if_none_match.split(","))


class _FileAnswer(FileResponse):
    """Starlette's FileResponse (GET, HEAD, Range), whose Range errors are JSON like every other error.

    Raised while the response starts, the errors reach the app's handlers (`latentz.server.errors`).
    """

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader as error:
            raise ApiError(400, f"bad Range header {http_range[:80]!r}: {error.content}") from None
        except RangeNotSatisfiable:
            raise ApiError(
                416,
                f"Range {http_range[:80]!r} lies outside the file ({file_size:,} bytes)",
                headers={"Content-Range": f"bytes */{file_size}"},
            ) from None


def serve_payload(request: Request, payload: Payload, *, immutable: bool = False) -> Response:
    """The payload gzipped when the browser accepts it, with its ETag (304 when the browser has it)
    and its caching: ``immutable`` for versioned URLs, revalidated otherwise."""
    compressed = (
        payload.gzip is not None
        and "range" not in request.headers
        and accepts_gzip(request.headers.get("accept-encoding"))
    )
    etag = f'"{payload.digest[:20]}{"-gzip" if compressed else ""}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE if immutable else REVALIDATE}
    if payload.gzip is not None:
        headers["Vary"] = "Accept-Encoding"
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if compressed:
        headers["Content-Encoding"] = "gzip"
        headers[UNCOMPRESSED_LENGTH] = str(payload.size)
        return Response(payload.gzip, media_type=payload.media_type, headers=headers)
    if payload.path is not None:
        return _FileAnswer(payload.path, media_type=payload.media_type, headers=headers)
    return Response(payload.data, media_type=payload.media_type, headers=headers)


def serve_file(request: Request, path: Path, *, immutable: bool = False) -> Response:
    """A file with an explicit media type and an ETag, compressed when that helps and it may be."""
    return serve_payload(request, file_payload(path), immutable=immutable)


def serve_json(request: Request, body: bytes) -> Response:
    """An API answer that changes rarely (the model list): gzipped, with an ETag for a 304."""
    return serve_payload(request, Payload.of(body, "application/json"))


def check_version(requested: str, payload: Payload, what: str) -> None:
    if requested != payload.version:
        raise ApiError(
            404,
            f"{what} has changed: this server has version {payload.version}, not {requested[:40]!r}; "
            "reload the page",
            "not_found",
        )


# -- pages ---------------------------------------------------------------------------------------------
def web_file(relative: str) -> Path:
    """A file under latentz/web, refusing anything that resolves outside it (or cannot be a file name)."""
    try:
        path = (WEB_DIR / relative).resolve()
        found = path.is_relative_to(WEB_DIR) and path.is_file()
    except (OSError, ValueError):  # an embedded NUL, a name too long for the file system
        found = False
    if not found:
        shown = relative if len(relative) <= 80 else relative[:80] + "..."
        raise ApiError(404, f"no such file: /static/{shown}", "not_found")
    return path


def import_map(web_runtime: WebRuntime) -> str:
    """The import map the pages load onnxruntime-web by: its versioned URL, cached for good."""
    imports = {ORT.name: web_runtime.url(ORT.files[0])} if web_runtime.dist is not None else {}
    return json.dumps({"imports": imports}, separators=(",", ":"))


def render_page(path: Path, web_runtime: WebRuntime) -> Payload:
    """A page with the import map written in first thing in its head (before any module script)."""
    mapping = import_map(web_runtime)

    def render() -> Payload:
        html = path.read_text(encoding="utf-8")
        tag = f'<script type="importmap">{mapping}</script>'
        html = re.sub(r"(<head[^>]*>)", lambda match: match.group(1) + "\n  " + tag, html, count=1)
        return Payload.of(html.encode(), MEDIA_TYPES[".html"])

    return PAYLOADS.get(("page", str(path), mapping), file_stamp(path), render)


def vendor_file(web_runtime: WebRuntime, name: str) -> Path:
    package = web_runtime.package
    if name not in package.files:
        raise ApiError(404, f"/vendor/{package.name}/{name} is not served (only {', '.join(package.files)})")
    if web_runtime.dist is None:
        code = "web_runtime_missing" if package is ORT else "not_found"
        raise ApiError(404, web_runtime.error or f"{package.name} is not installed", code)
    return web_runtime.dist / name


def check_vendor_version(web_runtime: WebRuntime, version: str) -> None:
    if web_runtime.dist is not None and version != web_runtime.version:
        raise ApiError(
            404,
            f"this server has {web_runtime.package.name} {web_runtime.version}, not {version[:40]!r}; "
            "reload the page",
            "not_found",
        )


def api_docs_page(swagger_ui: WebRuntime, openapi_url: str, title: str) -> Payload:
    """Swagger UI from node_modules (no CDN: it works offline and under the security headers)."""
    if swagger_ui.dist is None:
        message = (
            f"<!doctype html><meta charset=utf-8><title>{title}</title><h1>{title}</h1>"
            f"<p>The API documentation viewer could not be loaded: {swagger_ui.error}.</p>"
            f'<p>The OpenAPI schema it shows is at <a href="{openapi_url}">{openapi_url}</a>.</p>'
        )
        return Payload.of(message.encode(), MEDIA_TYPES[".html"])
    html = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=swagger_ui.url("swagger-ui-bundle.js"),
        swagger_css_url=swagger_ui.url("swagger-ui.css"),
        swagger_favicon_url="/static/favicon.svg",
        swagger_ui_parameters={"validatorUrl": None},  # the default validator is a web service
    )
    return Payload.of(bytes(html.body), MEDIA_TYPES[".html"])
