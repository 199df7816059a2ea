"""The pages (``latentz/web/``) and the three onnxruntime-web files they import, served as-is.

No build step: the pages are plain ES modules. onnxruntime-web comes from ``node_modules`` of the
repository checkout (``npm ci`` installs the version pinned in package-lock.json); set
``LATENTZ_NODE_MODULES`` to use another folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse, Response
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

import latentz
from latentz.server.errors import ApiError

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
PAGES = {"": "index.html", "codec": "codec.html", "receiver": "receiver.html", "explorer": "explorer.html"}
ORT_PACKAGE = "onnxruntime-web"
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
"""The only onnxruntime-web files the pages need (the WASM backend, SIMD + threads)."""

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


@dataclass(frozen=True)
class WebRuntime:
    """Where onnxruntime-web was found, or why it was not.

    ``error`` is for anyone (the health check, a 404): it names no folder of this machine;
    ``detail`` adds where it looked, for the server's log and the operator's terminal.
    """

    dist: Path | None
    version: str | None
    error: str | None
    detail: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "available": self.dist is not None,
            "package": ORT_PACKAGE,
            "version": self.version,
            "error": self.error,
        }


def candidate_node_modules() -> list[Path]:
    """$LATENTZ_NODE_MODULES, then the checkout this (editable) package lives in, then the cwd."""
    candidates = []
    if os.environ.get("LATENTZ_NODE_MODULES"):
        candidates.append(Path(os.environ["LATENTZ_NODE_MODULES"]))
    package_dir = Path(latentz.__file__).resolve().parent
    candidates.append(package_dir.parent.parent / "node_modules")  # <repo>/src/latentz -> <repo>
    candidates.append(Path.cwd() / "node_modules")
    return candidates


def find_web_runtime(node_modules: Path | None = None) -> WebRuntime:
    candidates = [node_modules] if node_modules is not None else candidate_node_modules()
    for folder in candidates:
        dist = folder / ORT_PACKAGE / "dist"
        if all((dist / name).is_file() for name in ORT_FILES):
            version = None
            with contextlib.suppress(OSError, ValueError):
                version = json.loads((folder / ORT_PACKAGE / "package.json").read_text()).get("version")
            return WebRuntime(dist=dist, version=version, error=None)
    looked = ", ".join(str(folder) for folder in candidates)
    advice = "run `npm ci` in the latentz repository (or `make run`), or set LATENTZ_NODE_MODULES"
    return WebRuntime(
        dist=None,
        version=None,
        error=f"{ORT_PACKAGE} is not installed on this server; {advice}",
        detail=f"{ORT_PACKAGE} is not installed (looked for {ORT_PACKAGE}/dist/{ORT_FILES[0]} in {looked}); "
        + advice,
    )


def _etag(path: Path) -> str:
    stat = path.stat()
    return '"' + hashlib.sha1(f"{path}:{stat.st_mtime_ns}:{stat.st_size}".encode()).hexdigest()[:20] + '"'


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


def serve_file(request: Request, path: Path) -> Response:
    """A file with an explicit media type and an ETag, answering 304 when the browser has it."""
    etag = _etag(path)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    media_type = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return _FileAnswer(path, media_type=media_type, headers=headers)


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


def vendor_file(web_runtime: WebRuntime, name: str) -> Path:
    if name not in ORT_FILES:
        raise ApiError(404, f"/vendor/{ORT_PACKAGE}/{name} is not served (only {', '.join(ORT_FILES)})")
    if web_runtime.dist is None:
        raise ApiError(404, web_runtime.error or f"{ORT_PACKAGE} is not installed", "web_runtime_missing")
    return web_runtime.dist / name
