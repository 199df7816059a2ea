"""The FastAPI app: JSON API over the shared model runtimes, the pages, and the files they load.

Endpoints that run a network are ``async``: they check the request in the event loop, wait for
an inference slot there (`JobGate`: a capped number of jobs at once, shared fairly between
clients; waiting holds no thread), then run the work in the thread pool. Each model's ONNX
sessions are created once (at start-up) and shared by every thread. Light endpoints (health,
model list, files) are plain ``def`` functions in the same thread pool, which queued heavy
requests therefore never fill. JSON answers that can be big (latents, base64 PNGs) are rendered to
bytes in the worker thread too (`json_answer`), never in the event loop. Error statuses: see
`latentz.server.errors`; who may call: `latentz.server.origins`.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import math
import os
import re
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.openapi.utils import get_openapi
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match
from starlette.types import ASGIApp, Scope

import latentz
from latentz import choice, codec, imaging, metrics
from latentz.bundle import BundleInfo
from latentz.codec import EntropyModelError
from latentz.codec.limits import SizeLimits, TooLargeError
from latentz.runtime import ModelRuntime, ModelRuntimeError, OutOfMemoryError, Prepared
from latentz.server import assets
from latentz.server.errors import ApiError, ErrorBody, install_handlers
from latentz.server.limits import (
    MAX_JSON_BYTES,
    MULTIPART_OVERHEAD,
    BodyGuard,
    JobGate,
    Limits,
    SecurityHeaders,
    check_upload_image,
    client_key,
    open_upload_image,
    parse_latentz,
    wait_for_disconnect,
)
from latentz.server.origins import CrossSiteGuard
from latentz.server.protocol import HEADER_TIMEOUT_STATE
from latentz.server.registry import SERVED_FILES, ModelRegistry

log = logging.getLogger("latentz.server")

LATENTZ_MEDIA_TYPE = "application/x-latentz"
OPENAPI_URL = "/openapi.json"
QUALITY_FIELD_DESCRIPTION = (
    "0..100, higher is better; without it, the model's recommended quality "
    "(`recommended_quality` in GET /api/models: 50 for photo models, 30 for mnist-z32)"
)

ModelName = Annotated[str, Field(min_length=1, max_length=200)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

T = TypeVar("T")
LIMITS_ENVIRONMENT = "LATENTZ_SERVER_LIMITS"
"""JSON of `Limits` fields, read by `create_app_from_environment` in each uvicorn worker process."""


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "model": ErrorBody}


ERRORS: dict[int, dict[str, Any]] = {
    400: _error("Malformed request, corrupt image or corrupt .latentz file"),
    403: _error("A cross-site request (Origin / Sec-Fetch-Site of another site, not allowed)"),
    404: _error("Unknown model (the error lists the installed ones), or no such file"),
    408: _error("The request body arrived too slowly (idle or total body timeout)"),
    409: _error("The file was made by another model, or the model is not exported"),
    413: _error("Upload over the byte limit, or image over the pixel limit"),
    415: _error("Content is not a supported image / not a .latentz file (sniffed)"),
    429: _error(
        "All inference slots stayed busy for the queue timeout, or this client already has its "
        "maximum of requests waiting (Retry-After: 1)"
    ),
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = dict(ERRORS)
"""Every error an endpoint that takes a body and runs a model can answer."""
ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorBody"}
QUERY_ERRORS: dict[int | str, dict[str, Any]] = {
    status: ERRORS[status] for status in (400, 403, 404, 409, 429)
}
"""What a bodiless endpoint that runs a model can answer."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _download_name(filename: str | None, suffix: str) -> str:
    """A safe file name for Content-Disposition, from the upload's name (used for nothing else)."""
    stem = Path(filename or "").stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    return f"{stem[:80]}{suffix}"


async def _read_upload(upload: UploadFile, limits: Limits) -> bytes:
    data = await upload.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise ApiError(
            413,
            f"upload too large: more than {limits.max_upload_bytes:,} bytes (the limit per file)",
            limit=limits.max_upload_bytes,
        )
    return data


@contextlib.contextmanager
def _model_errors() -> Iterator[None]:
    """Turn the runtime's and codec's exceptions into API errors with their own messages."""
    try:
        yield
    except TooLargeError as error:
        raise ApiError(413, str(error), "too_large", limit=error.limit) from None
    except OutOfMemoryError as error:
        raise ApiError(413, f"too large for this server's memory: {error}", "too_large") from None
    except codec.ModelMismatchError as error:
        raise ApiError(409, str(error), "model_mismatch") from None
    except codec.LatentzFormatError as error:
        raise ApiError(400, str(error)) from None
    except (ModelRuntimeError, EntropyModelError) as error:
        raise ApiError(409, str(error), "model_not_exported") from None
    except imaging.ImageError as error:
        raise ApiError(400, str(error).replace("<bytes>: ", "")) from None


def _report_psnr(original: np.ndarray, decoded: np.ndarray) -> float | None:
    """PSNR for a JSON report: null when the images are identical (infinite PSNR, which JSON cannot
    carry; a flat grey photo decodes exactly)."""
    value = metrics.psnr(original, decoded)
    return value if math.isfinite(value) else None


def _prepare(model: ModelRuntime, image: Image.Image, limits: Limits) -> Prepared:
    """The model's view of an upload; a fully convolutional model gets huge photos scaled down first."""
    return model.prepare(image, limits.sizes())


def _webp_at_budget(image: np.ndarray, budget: int) -> dict[str, Any]:
    """The best WebP no bigger than ``budget`` bytes, or its smallest, as the report shows it."""
    quality, data, fits = imaging.webp_within(image, budget)
    decoded = imaging.decode_baseline(data, image.shape[2])
    return {
        "bytes": len(data),
        "quality": quality,
        "fits_budget": fits,
        "psnr": _report_psnr(image, decoded),
        "webp_base64": _b64(data),
        "note": (
            f"WebP quality {quality}, the best that fits in {budget} bytes"
            if fits
            else f"even WebP quality 0 takes {len(data)} bytes, more than the {budget}-byte budget"
        ),
    }


def upload_notes(image: Image.Image, data: bytes) -> list[str]:
    """What the codec does to this upload that its owner would not expect, as sentences: the
    transparency composited on white (as `imaging.to_array` does), the frames it leaves out."""
    notes = []
    if imaging.has_transparent_pixels(image):
        notes.append("Transparent pixels were composited on white: this is how the model sees them.")
    frames, at_least = _frame_count(data)
    counted = f"{frames:,} or more" if at_least else f"{frames:,}"
    if frames > 1 and image.format == "TIFF":
        notes.append(f"This TIFF has {counted} pages: only the first page is coded.")
    elif frames > 1:
        kind = {"WEBP": "WebP"}.get(image.format or "", image.format)
        notes.append(f"This animated {kind} has {counted} frames: only the first frame is coded.")
    return notes


MAX_COUNTED_FRAMES = 1000
"""Frames counted at most (a note then says '1,000 or more'): seeking costs about 40 us a frame, so
a 16 MiB GIF of tiny frames cannot make a report slow."""


def _frame_count(data: bytes) -> tuple[int, bool]:
    """How many frames (or pages) an image file holds, and whether that is only a lower bound (a
    damaged later frame, or `MAX_COUNTED_FRAMES`), from a second, lazy parse of its bytes (seeking
    the decoded image would disturb it). Seeking parses a frame's header: nothing is decoded."""
    count = 1
    with Image.open(io.BytesIO(data), formats=imaging.ACCEPTED_FORMATS) as parsed:
        try:
            while count < MAX_COUNTED_FRAMES:
                parsed.seek(count)
                count += 1
        except EOFError:
            return count, False
        except Exception:  # Pillow's parsers fail on a damaged later frame with many types
            return count, True
    return count, True


def _flat(array: np.ndarray) -> np.ndarray:
    """A latent as the JSON answers carry it: float32 values in C order (`render_json` writes them)."""
    return np.asarray(array, dtype=np.float32).ravel()


JSON_CHUNK_VALUES = 4096
_dumps = partial(json.dumps, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def render_json(content: Any) -> bytes:
    """Compact JSON of ``content``; numpy arrays become lists of numbers, written 4,096 at a time.

    Called in the worker thread that made the answer. ``json.dumps`` of one big list holds the
    interpreter lock throughout (a million floats: about a second), which would stall the event
    loop as surely as running it there; between pieces the thread lets the loop run.
    """
    parts: list[str] = []
    _render(content, parts)
    return "".join(parts).encode()


def _render(value: Any, parts: list[str]) -> None:
    if isinstance(value, np.ndarray):
        flat = value.ravel()
        pieces = (
            _dumps(flat[start : start + JSON_CHUNK_VALUES].astype(np.float64).tolist())[1:-1]
            for start in range(0, flat.size, JSON_CHUNK_VALUES)
        )
        parts.append("[" + ",".join(pieces) + "]")
    elif isinstance(value, dict):
        parts.append("{")
        for index, (key, item) in enumerate(value.items()):
            parts.append(("," if index else "") + _dumps(str(key)) + ":")
            _render(item, parts)
        parts.append("}")
    elif isinstance(value, list | tuple):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _render(item, parts)
        parts.append("]")
    else:
        parts.append(_dumps(value))


def json_answer(content: dict[str, Any]) -> Response:
    """A JSON response whose bytes are rendered now (in the worker thread that calls this)."""
    return Response(render_json(content), media_type="application/json")


@dataclass(frozen=True)
class EncodeSettings:
    """The model and quality an upload is coded with, and why, as the JSON report says them."""

    model: ModelRuntime
    quality: int
    model_reason: str | None  # set when the server chose the model (`POST /api/encode`)
    quality_reason: str | None  # set when the quality is the model's recommended one
    warning: str | None  # the model does not fit the image (`latentz.choice.fit_warning`)
    better_model: str | None  # the installed model that fits it, when ``model`` does not


def _encode_report(
    settings: EncodeSettings,
    upload: bytes,
    image_format: str | None,
    prepared: Prepared,
    blob: bytes,
    notes: list[str],
    filename: str,
    sizes: SizeLimits,
) -> dict[str, Any]:
    """The codec page's report: sizes, the model's input, the reconstruction and WebP at the same budget."""
    model = settings.model
    header, _ = codec.unpack(blob)
    reconstruction = model.decompress(blob, sizes)
    webp = _webp_at_budget(prepared.image, len(blob))
    height, width, channels = prepared.image.shape
    return {
        "model": model.name,
        "model_reason": settings.model_reason,
        "quality": settings.quality,
        "quality_reason": settings.quality_reason,
        "warning": settings.warning,
        "better_model": settings.better_model,
        "notes": notes,
        "step": header.step,
        "note": prepared.note,
        "original": {
            "bytes": len(upload),
            "format": image_format,
            "width": prepared.original_size[0],
            "height": prepared.original_size[1],
        },
        "input": {
            "width": width,
            "height": height,
            "channels": channels,
            "raw_bytes": int(prepared.image.size),
            "png_base64": _b64(imaging.png_bytes(prepared.image)),
        },
        "latentz": {
            "bytes": len(blob),
            "header_bytes": codec.header_bytes(header),
            "filename": filename,
            "base64": _b64(blob),
            "latent_shape": list(header.latent_shape),
        },
        "reconstruction": {
            "png_base64": _b64(imaging.png_bytes(reconstruction)),
            "psnr": _report_psnr(prepared.image, reconstruction),
        },
        "webp": webp,
        "ratio": len(upload) / len(blob),
        "raw_ratio": prepared.image.size / len(blob),
        "bits_per_pixel": 8 * len(blob) / (height * width),
    }


class InterpolateRequest(BaseModel):
    """Two latents (flattened, C order) and how many images to make from one to the other."""

    start: list[FiniteFloat] = Field(min_length=1, max_length=1 << 20)
    end: list[FiniteFloat] = Field(min_length=1, max_length=1 << 20)
    steps: int = Field(8, ge=2, description="images including both ends")
    method: Literal["linear", "slerp"] = "linear"


def interpolate_latents(start: np.ndarray, end: np.ndarray, steps: int, method: str) -> np.ndarray:
    """Straight line, or spherical (slerp, stays at the prior's typical radius) between two latents."""
    weights = np.linspace(0.0, 1.0, steps, dtype=np.float64)[:, None]
    a, b = start.astype(np.float64).ravel(), end.astype(np.float64).ravel()
    if method == "slerp":
        norms = np.linalg.norm(a) * np.linalg.norm(b)
        angle = np.arccos(np.clip(a @ b / norms, -1.0, 1.0)) if norms > 0 else 0.0
        if angle > 1e-6:
            out = (np.sin((1 - weights) * angle) * a + np.sin(weights * angle) * b) / np.sin(angle)
            return out.astype(np.float32).reshape(steps, *start.shape)
    out = (1 - weights) * a + weights * b
    return out.astype(np.float32).reshape(steps, *start.shape)


class LatentzApp(FastAPI):
    """FastAPI whose every answer, 500s included, carries the `SecurityHeaders`.

    Starlette renders the 500 handler's answer in its ServerErrorMiddleware, which sits outside
    all middleware added with ``add_middleware``; so the headers wrap the whole stack instead.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def create_app(
    limits: Limits | None = None, *, preload: bool = True, node_modules: Path | None = None
) -> FastAPI:
    """The latentz web app. ``preload`` creates every model's ONNX sessions at start-up.

    Serve it with ``http=GuardedH11Protocol`` (as `latentz serve` does) for its header timeout and
    for closing, rather than draining, connections whose body it refused.
    """
    limits = limits or Limits()
    sizes = limits.sizes()
    registry = ModelRegistry()
    gate = JobGate(limits.max_concurrent_jobs, limits.queue_timeout_s, limits.max_waiting_per_client)
    web_runtime = assets.find_web_runtime(node_modules)
    swagger_ui = assets.find_package(assets.SWAGGER_UI, node_modules)
    model_files = assets.ModelFiles(registry.file_path)
    worker = secrets.token_hex(6)
    """Which worker answered, for `latentz serve --workers N` (random: a PID tells strangers too much)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        registry.refresh()
        if preload:
            loaded = registry.preload()
            log.info("models loaded: %s", ", ".join(loaded) or "none")
        for package in (web_runtime, swagger_ui):
            if package.error:
                log.warning("%s", package.detail)
        if preload:  # compress the big files and make the lean networks before the first visitor asks
            threading.Thread(target=warm_up, name="latentz-warm-up", daemon=True).start()
        # uvicorn hands the lifespan state to each connection's protocol (`GuardedH11Protocol`).
        yield {HEADER_TIMEOUT_STATE: limits.header_timeout_s}

    app = LatentzApp(
        title="latentz",
        version=latentz.__version__,
        description=(
            "Image VAEs as a learned codec: encode an image to a tiny .latentz file, decode it back, "
            "sample and interpolate. Errors are JSON `{error, code, status}`; see each endpoint's statuses."
        ),
        lifespan=lifespan,
        docs_url=None,  # served below from node_modules, not from a CDN
        redoc_url=None,
        openapi_url=None,  # served below, compressed and revalidated
    )
    app.state.registry = registry
    app.state.limits = limits
    app.state.gate = gate
    app.state.web_runtime = web_runtime
    install_handlers(app)

    def openapi_schema() -> dict[str, Any]:
        """FastAPI's schema, minus the 422 it documents for every validated input: this app answers 400."""
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            for operations in schema["paths"].values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    responses["421"] = {  # every route checks the Host header
                        "description": "The Host header names a host this server does not answer to",
                        "content": {"application/json": {"schema": ERROR_SCHEMA}},
                    }
                    if responses.pop("422", None) is not None:
                        responses.setdefault("400", {"description": ERRORS[400]["description"]})
                        responses["400"]["content"] = {"application/json": {"schema": ERROR_SCHEMA}}
            for unused in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi_schema  # type: ignore[method-assign]

    async def run_job(request: Request, work: Callable[[], T]) -> T:
        """Wait for an inference slot in the event loop (no thread held), then run ``work`` in a thread.

        A request whose client disconnects while waiting leaves the line without doing the work.
        """
        async with gate.slot(client_key(request), partial(wait_for_disconnect, request.receive)):
            with _model_errors():
                return await run_in_threadpool(work)

    async def runtime_of(name: str) -> ModelRuntime:
        """The named model (404/409); in a thread, since an unknown name rescans the bundle folders."""
        return await run_in_threadpool(registry.runtime, name)

    # -- models ---------------------------------------------------------------------------
    @app.get("/api/health", tags=["models"])
    async def health() -> dict[str, Any]:
        """Whether the server is up, which models it has, and whether the pages can run.

        ``async``: it answers from the event loop even when every thread is busy.
        """
        return {
            "status": "ok",
            "version": latentz.__version__,
            "worker": worker,  # which worker answered, with `latentz serve --workers N`
            "models": registry.names(),
            "problems": registry.problems,
            "web_runtime": web_runtime.as_json(),
            "limits": {
                "max_upload_bytes": limits.max_upload_bytes,
                "max_json_bytes": MAX_JSON_BYTES,
                "max_pixels": limits.max_pixels,
                "max_spatial_side": limits.max_spatial_side,
                "max_samples": limits.max_samples,
                "max_interpolation_steps": limits.max_interpolation_steps,
                "max_concurrent_jobs": gate.slots,
                "max_waiting_per_client": gate.max_waiting_per_client,
                "queue_timeout_s": gate.timeout_s,
                "body_idle_timeout_s": limits.body_idle_timeout_s,
                "body_timeout_s": limits.body_timeout_s,
                "header_timeout_s": limits.header_timeout_s,
            },
            "jobs": {"running": gate.running, "waiting": gate.waiting, **gate.counts},
        }

    def with_file_urls(summary: dict[str, Any], info: BundleInfo) -> dict[str, Any]:
        return {**summary, "files": model_files.urls(info, SERVED_FILES)}

    @app.get("/api/models", tags=["models"])
    def list_models(request: Request) -> Response:
        """Every installed model with its shape, data set, metrics and the URLs of its browser files
        (versioned: each URL changes with its file's content; lean copies of the networks included)."""
        registry.rescan()
        infos = [registry.info(name) for name in registry.names()]
        models = [with_file_urls(registry.summary(info), info) for info in infos]
        return assets.serve_json(request, render_json({"models": models}))

    @app.get("/api/models/{name}", tags=["models"], responses={404: ERRORS[404]})
    def model_card(name: str, request: Request) -> Response:
        """One model's summary plus its full config and card (latent_stats drive the explorer's sliders)."""
        info = registry.info(name)
        return assets.serve_json(request, render_json(with_file_urls(registry.detail(info), info)))

    @app.api_route(
        "/api/models/{name}/files/{filename}",
        methods=["HEAD"],
        include_in_schema=False,
    )
    @app.get(
        "/api/models/{name}/files/{filename}",
        tags=["models"],
        responses={
            200: {"content": {"application/octet-stream": {}, "application/json": {}}},
            304: {"description": "Not modified (If-None-Match matched the ETag)"},
            404: ERRORS[404],
            409: ERRORS[409],
        },
    )
    def model_file(name: str, filename: str, request: Request) -> Response:
        """encoder.onnx, decoder.onnx or entropy_model.json of a bundle, or a lean copy of a network
        (encoder.int8.onnx, decoder.fp16.onnx, ...), for the browser; revalidated (ETag)."""
        return assets.serve_payload(request, model_files.payload(registry.info(name), filename))

    @app.api_route(
        "/api/models/{name}/files/{version}/{filename}",
        methods=["HEAD"],
        include_in_schema=False,
    )
    @app.get(
        "/api/models/{name}/files/{version}/{filename}",
        tags=["models"],
        responses={
            200: {"content": {"application/octet-stream": {}, "application/json": {}}},
            304: {"description": "Not modified (If-None-Match matched the ETag)"},
            404: ERRORS[404],
            409: ERRORS[409],
        },
    )
    def versioned_model_file(name: str, version: str, filename: str, request: Request) -> Response:
        """The same files at the URLs /api/models lists: the version is the file's content digest,
        so the answer may be cached for good (404 once the file has changed)."""
        payload = model_files.payload(registry.info(name), filename)
        assets.check_version(version, payload, f"{name}'s {filename}")
        return assets.serve_payload(request, payload, immutable=True)

    # -- images -> latents and files ------------------------------------------------------
    async def read_image_upload(upload: UploadFile) -> bytes:
        """The upload's bytes, sniffed and size-checked from the header before it may queue."""
        data = await _read_upload(upload, limits)
        check_upload_image(data, limits.max_pixels)
        return data

    def encode_settings(
        image: Image.Image, named: ModelRuntime | None, quality: int | None
    ) -> EncodeSettings:
        """The model (``named``, else the one `latentz.choice` picks for the image) and the quality
        (``quality``, else the model's recommended one), with the reasons and misfit warning."""
        width, height = image.size
        channels = choice.image_channels(image)
        candidates = registry.encoding_infos()
        if named is None:
            try:
                picked = choice.choose_model(width, height, channels, candidates)
            except choice.NoModelError:
                message = (
                    "no installed model can encode: install one, or export one with `latentz export MODEL`"
                )
                raise ApiError(409, message, "model_not_exported") from None
            model = registry.runtime(picked.name)
            model_reason, warning, better = picked.reason, picked.warning, None
        else:  # an exported model is itself a candidate: the choice below always finds one
            model, model_reason = named, None
            warning = choice.fit_warning(named.info, width, height, channels, candidates, how_to_switch=None)
            fits = choice.choose_model(width, height, channels, candidates).name if warning else None
            better = fits if fits != named.name else None
        quality_reason = None
        if quality is None:
            recommended = choice.recommended_quality(model.config)
            quality, quality_reason = recommended.quality, recommended.reason
        return EncodeSettings(model, quality, model_reason, quality_reason, warning, better)

    async def encode_upload(
        request: Request,
        named: ModelRuntime | None,
        file: UploadFile,
        quality: int | None,
        format: Literal["latentz", "json"],
    ) -> Response:
        data = await read_image_upload(file)

        def work() -> Response:
            image = open_upload_image(data, limits.max_pixels)
            settings = encode_settings(image, named, quality)
            model = settings.model
            notes = upload_notes(image, data)
            prepared = _prepare(model, image, limits)
            blob = model.compress(prepared.image, quality=settings.quality)
            download = _download_name(file.filename, ".latentz")
            if format == "latentz":
                return Response(
                    blob,
                    media_type=LATENTZ_MEDIA_TYPE,
                    headers={
                        "Content-Disposition": f'attachment; filename="{download}"',
                        "X-Latentz-Model": model.name,
                        "X-Latentz-Quality": str(settings.quality),
                    },
                )
            report = _encode_report(settings, data, image.format, prepared, blob, notes, download, sizes)
            return json_answer(report)

        return await run_job(request, work)

    encode_description = (
        "With ``format=json``: the file as base64, the reconstruction, its PSNR and a WebP of the same "
        "image at the same byte budget; the model and quality used and why (``model_reason``, "
        "``quality_reason``), a ``warning`` sentence when the model does not fit the image (and "
        "``better_model``), and ``notes`` on what was changed (transparency composited on white, the "
        "first frame of an animation). The file answer says the model and quality in ``X-Latentz-Model`` "
        "and ``X-Latentz-Quality``."
    )

    @app.post(
        "/api/encode",
        tags=["codec"],
        responses={200: {"content": {LATENTZ_MEDIA_TYPE: {}, "application/json": {}}}, **ERROR_RESPONSES},
        description="Compress an image to a .latentz file with the installed model that fits it (a small "
        "grey image: the digit codec; a colour photo: the photo codec nearest its size; the rule of "
        "`latentz.choice`, as `latentz encode` without -m), or with ``model``. " + encode_description,
    )
    async def encode_any(
        request: Request,
        file: UploadFile = File(..., description="an image (JPEG, PNG, WebP, ...; judged by content)"),
        quality: int | None = Form(None, ge=0, le=100, description=QUALITY_FIELD_DESCRIPTION),
        format: Literal["latentz", "json"] = Query("latentz", description="the file, or a JSON report"),
        model: str | None = Query(None, description="code with this model instead of the one that fits"),
    ) -> Response:
        named = await runtime_of(model) if model else None
        return await encode_upload(request, named, file, quality, format)

    @app.post(
        "/api/models/{name}/encode",
        tags=["codec"],
        responses={200: {"content": {LATENTZ_MEDIA_TYPE: {}, "application/json": {}}}, **ERROR_RESPONSES},
        description="Compress an image to a .latentz file with this model. " + encode_description,
    )
    async def encode(
        request: Request,
        name: str,
        file: UploadFile = File(..., description="an image (JPEG, PNG, WebP, ...; judged by content)"),
        quality: int | None = Form(None, ge=0, le=100, description=QUALITY_FIELD_DESCRIPTION),
        format: Literal["latentz", "json"] = Query("latentz", description="the file, or a JSON report"),
    ) -> Response:
        return await encode_upload(request, await runtime_of(name), file, quality, format)

    @app.post(
        "/api/models/{name}/latent",
        tags=["latents"],
        responses={200: {"content": {"application/json": {}}}, **ERROR_RESPONSES},
    )
    async def latent(
        request: Request, name: str, file: UploadFile = File(..., description="an image")
    ) -> Response:
        """The posterior mean and log-variance of an image (no quantisation), and the model's input."""
        model = await runtime_of(name)
        data = await read_image_upload(file)

        def work() -> Response:
            prepared = _prepare(model, open_upload_image(data, limits.max_pixels), limits)
            mean, logvar = model.encode(prepared.image)
            return json_answer(
                {
                    "model": model.name,
                    "shape": list(mean.shape[1:]),
                    "mean": _flat(mean[0]),
                    "logvar": _flat(logvar[0]),
                    "note": prepared.note,
                    "input_png_base64": _b64(imaging.png_bytes(prepared.image)),
                }
            )

        return await run_job(request, work)

    @app.post(
        "/api/models/{name}/reconstruct",
        tags=["latents"],
        responses={200: {"content": {"image/png": {}, "application/json": {}}}, **ERROR_RESPONSES},
    )
    async def reconstruct(
        request: Request,
        name: str,
        file: UploadFile = File(..., description="an image"),
        format: Literal["png", "json"] = Query("png"),
    ) -> Response:
        """Encode then decode the posterior mean (no quantisation): PNG, or JSON with PSNR."""
        model = await runtime_of(name)
        data = await read_image_upload(file)

        def work() -> Response:
            prepared = _prepare(model, open_upload_image(data, limits.max_pixels), limits)
            output = model.reconstruct(prepared.image)[0]
            png = imaging.png_bytes(output)
            if format == "png":
                return Response(png, media_type="image/png")
            return json_answer(
                {
                    "model": model.name,
                    "note": prepared.note,
                    "psnr": _report_psnr(prepared.image, output),
                    "png_base64": _b64(png),
                    "input_png_base64": _b64(imaging.png_bytes(prepared.image)),
                }
            )

        return await run_job(request, work)

    # -- .latentz files -> images ---------------------------------------------------------
    async def file_and_model(
        upload: UploadFile, name: str | None
    ) -> tuple[bytes, codec.Header, ModelRuntime]:
        """The upload, its checked header and the model to run it with, before it may queue."""
        data = await _read_upload(upload, limits)

        def check() -> tuple[codec.Header, ModelRuntime]:
            header = parse_latentz(data)  # CRC over the whole file: a thread, not the event loop
            model = registry.runtime(name) if name else registry.for_header(header)
            with _model_errors():
                model.check_header(header, sizes)  # declared sizes judged before the file may queue
            return header, model

        header, model = await run_in_threadpool(check)
        return data, header, model

    async def decode_png(request: Request, upload: UploadFile, name: str | None) -> Response:
        data, header, model = await file_and_model(upload, name)

        def work() -> Response:
            return Response(
                imaging.png_bytes(model.decompress(data, sizes)),
                media_type="image/png",
                headers={"X-Latentz-Model": model.name, "X-Latentz-Size": f"{header.width}x{header.height}"},
            )

        return await run_job(request, work)

    @app.post(
        "/api/decode",
        tags=["codec"],
        responses={200: {"content": {"image/png": {}}}, **ERROR_RESPONSES},
    )
    async def decode_any(
        request: Request,
        file: UploadFile = File(..., description="a .latentz file"),
        model: str | None = Query(None, description="decode with this model instead of the file's own"),
    ) -> Response:
        """Decode a .latentz file to PNG with the installed model whose fingerprint it carries."""
        return await decode_png(request, file, model)

    @app.post(
        "/api/models/{name}/decode",
        tags=["codec"],
        responses={200: {"content": {"image/png": {}}}, **ERROR_RESPONSES},
    )
    async def decode_with(
        request: Request, name: str, file: UploadFile = File(..., description="a .latentz file")
    ) -> Response:
        """Decode a .latentz file with this model; 409 if the file was made by another one."""
        return await decode_png(request, file, name)

    @app.post(
        "/api/read", tags=["codec"], responses={200: {"content": {"application/json": {}}}, **ERROR_RESPONSES}
    )
    async def read_file(
        request: Request,
        file: UploadFile = File(..., description="a .latentz file"),
        model: str | None = Query(None, description="check against this model instead of the file's own"),
    ) -> Response:
        """Parse and entropy-decode a .latentz file on the server: its header and dequantised latent.

        The receiver page runs the model's decoder.onnx on this latent in the browser.
        """
        data, _, runtime_model = await file_and_model(file, model)

        def work() -> Response:
            header, latent_values = runtime_model.read(data, sizes)
            return json_answer(
                {
                    "model": runtime_model.name,
                    "fingerprint": header.fingerprint_hex,
                    "entropy_model_id": header.entropy_id,
                    "bytes": len(data),
                    "header_bytes": codec.header_bytes(header),
                    "height": header.height,
                    "width": header.width,
                    "channels": header.channels,
                    "latent_shape": list(header.latent_shape),
                    "step": header.step,
                    "step_units": header.step / codec.FINE_PER_UNIT,
                    "latent": _flat(latent_values),
                    "decoder": model_files.browser_decoder(registry.info(runtime_model.name)),
                }
            )

        return await run_job(request, work)

    # -- the prior and the latent space ---------------------------------------------------
    async def images_response(
        request: Request,
        model: ModelRuntime,
        make_latents: Callable[[], np.ndarray],
        format: str,
        **extra: Any,
    ) -> Response:
        def work() -> Response:
            latents = make_latents()
            images = model.decode(latents)
            if format == "png":
                columns = min(len(images), 8)
                return Response(imaging.png_bytes(imaging.grid(images, columns)), media_type="image/png")
            return json_answer(
                {
                    "model": model.name,
                    **extra,
                    "latent_shape": list(latents.shape[1:]),
                    "latents": [_flat(item) for item in latents],
                    "images": [_b64(imaging.png_bytes(image)) for image in images],
                }
            )

        return await run_job(request, work)

    @app.get(
        "/api/models/{name}/sample",
        tags=["latents"],
        responses={200: {"content": {"image/png": {}, "application/json": {}}}, **QUERY_ERRORS},
    )
    async def sample(
        request: Request,
        name: str,
        count: int = Query(8, ge=1, le=limits.max_samples),
        seed: int = Query(0, ge=0, le=2**63 - 1),
        format: Literal["json", "png"] = Query("json", description="latents + PNGs, or one PNG grid"),
    ) -> Response:
        """Decode ``count`` latents drawn from the prior N(0, I); the same seed gives the same images."""
        model = await runtime_of(name)
        shape = model.config.latent_shape()

        def draw() -> np.ndarray:
            return np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)

        return await images_response(request, model, draw, format, seed=seed, count=count)

    @app.post(
        "/api/models/{name}/interpolate",
        tags=["latents"],
        responses={200: {"content": {"image/png": {}, "application/json": {}}}, **ERROR_RESPONSES},
    )
    async def interpolate(
        request: Request,
        name: str,
        body: InterpolateRequest,
        format: Literal["json", "png"] = Query("json", description="latents + PNGs, or one PNG strip"),
    ) -> Response:
        """Decode ``steps`` latents from ``start`` to ``end`` (flattened latents of this model)."""
        model = await runtime_of(name)
        shape = model.config.latent_shape()
        size = int(np.prod(shape))
        for label, values in (("start", body.start), ("end", body.end)):
            if len(values) != size:
                raise ApiError(
                    400, f"{label} has {len(values)} values; {model.name} latents have {size} {tuple(shape)}"
                )
        if body.steps > limits.max_interpolation_steps:
            raise ApiError(400, f"steps is {body.steps}; at most {limits.max_interpolation_steps} allowed")
        ends = []
        for label, values in (("start", body.start), ("end", body.end)):
            with np.errstate(over="ignore"):
                latent = np.asarray(values, dtype=np.float32).reshape(shape)
            if not np.isfinite(latent).all():
                message = f"{label} has values beyond float32's range (about ±3.4e38); latents are float32"
                raise ApiError(400, message)
            ends.append(latent)
        start, end = ends

        def line() -> np.ndarray:
            latents = interpolate_latents(start, end, body.steps, body.method)
            if not np.isfinite(latents).all():
                message = "the interpolated latents overflow float32; use smaller start and end values"
                raise ApiError(400, message)
            return latents

        return await images_response(request, model, line, format, steps=body.steps, method=body.method)

    # -- pages ----------------------------------------------------------------------------
    def _page(request: Request, page: str) -> Response:
        return assets.serve_payload(
            request, assets.render_page(assets.web_file(assets.PAGES[page]), web_runtime)
        )

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index_page(request: Request) -> Response:
        return _page(request, "")

    @app.api_route("/codec", methods=["GET", "HEAD"], include_in_schema=False)
    def codec_page(request: Request) -> Response:
        return _page(request, "codec")

    @app.api_route("/receiver", methods=["GET", "HEAD"], include_in_schema=False)
    def receiver_page(request: Request) -> Response:
        return _page(request, "receiver")

    @app.api_route("/explorer", methods=["GET", "HEAD"], include_in_schema=False)
    def explorer_page(request: Request) -> Response:
        return _page(request, "explorer")

    @app.api_route("/favicon.ico", methods=["GET", "HEAD"], include_in_schema=False)
    def favicon() -> Response:
        return RedirectResponse("/static/favicon.svg")

    @app.api_route("/static/{relative:path}", methods=["GET", "HEAD"], include_in_schema=False)
    def static_file(relative: str, request: Request) -> Response:
        return assets.serve_file(request, assets.web_file(relative))

    vendored = {package.package.name: package for package in (web_runtime, swagger_ui)}

    def vendor_package(package: str) -> assets.WebRuntime:
        if package not in vendored:
            raise ApiError(
                404, f"/vendor/{package[:80]} is not served (only {', '.join(vendored)})", "not_found"
            )
        return vendored[package]

    @app.api_route("/vendor/{package}/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    def vendor(package: str, name: str, request: Request) -> Response:
        """An npm file at its unversioned URL (revalidated each visit)."""
        return assets.serve_file(request, assets.vendor_file(vendor_package(package), name))

    @app.api_route("/vendor/{package}/{version}/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    def versioned_vendor(package: str, version: str, name: str, request: Request) -> Response:
        """An npm file at the URL that names its version: cached for good."""
        runtime = vendor_package(package)
        path = assets.vendor_file(runtime, name)
        assets.check_vendor_version(runtime, version)
        return assets.serve_file(request, path, immutable=True)

    schema_payload: list[assets.Payload] = []

    @app.api_route(OPENAPI_URL, methods=["GET", "HEAD"], include_in_schema=False)
    def openapi_document(request: Request) -> Response:
        """The OpenAPI schema (fixed once the app runs): gzipped, with an ETag for a 304."""
        if not schema_payload:
            schema_payload.append(assets.Payload.of(render_json(app.openapi()), "application/json"))
        return assets.serve_payload(request, schema_payload[0])

    @app.api_route("/docs", methods=["GET", "HEAD"], include_in_schema=False)
    def api_docs(request: Request) -> Response:
        """Swagger UI on this API's schema, from node_modules (it works offline)."""
        return assets.serve_payload(
            request, assets.api_docs_page(swagger_ui, OPENAPI_URL, f"{app.title} API")
        )

    @app.api_route("/redoc", methods=["GET", "HEAD"], include_in_schema=False)
    def redoc() -> Response:
        return RedirectResponse("/docs")

    def warm_up() -> None:
        """What a first visit fetches, made ready at start-up (each is made once, whoever asks first)."""
        try:
            for name in web_runtime.package.files if web_runtime.dist else ():
                assets.file_payload(assets.vendor_file(web_runtime, name))
            for page in assets.PAGES.values():
                assets.render_page(assets.web_file(page), web_runtime)
            for name in registry.names():
                with contextlib.suppress(ApiError):
                    model_files.urls(registry.info(name), SERVED_FILES)
        except Exception:  # a warm-up that fails leaves the work to the first request
            log.exception("warming up the browser files failed")

    # -- who may call, and how big a body may be (outermost last) -----------------------------
    sampling = [route for route in app.routes if isinstance(route, APIRoute) and route.endpoint is sample]

    def runs_network(scope: Scope) -> bool:
        """GET requests that run a model (every other method is checked anyway)."""
        return any(route.matches(scope)[0] is Match.FULL for route in sampling)

    app.add_middleware(
        BodyGuard,
        max_body_bytes=limits.max_upload_bytes + MULTIPART_OVERHEAD,
        max_upload_bytes=limits.max_upload_bytes,
        idle_timeout_s=limits.body_idle_timeout_s,
        total_timeout_s=limits.body_timeout_s,
    )
    app.add_middleware(  # outside the body guard: a stranger's request is refused before its size
        CrossSiteGuard,
        allowed_hosts=limits.allowed_hosts,
        allowed_origins=limits.allowed_origins,
        runs_network=runs_network,
    )
    return app


def create_app_from_environment() -> FastAPI:
    """The app for each of ``latentz serve --workers N``'s worker processes, with the command's limits.

    uvicorn imports a factory by name in every worker, so the limits travel as JSON in
    ``$LATENTZ_SERVER_LIMITS`` (set by `latentz serve`).
    """
    settings = json.loads(os.environ.get(LIMITS_ENVIRONMENT) or "{}")
    return create_app(Limits(**settings))
