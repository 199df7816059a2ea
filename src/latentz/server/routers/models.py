"""The installed models: health, the model list, a model's card and its files for the browser."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

import latentz
from latentz.bundle import BundleInfo, coding_files
from latentz.server import assets
from latentz.server.answers import render_json
from latentz.server.dependencies import Server, ServerState
from latentz.server.errors import ERRORS
from latentz.server.limits import MAX_JSON_BYTES

router = APIRouter(tags=["models"])

FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}, "application/json": {}}},
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
    404: ERRORS[404],
    409: ERRORS[409],
}


@router.get("/api/health")
async def health(state: Server) -> dict[str, Any]:
    """Whether the server is up, which models it has, and whether the pages can run.

    ``async``: it answers from the event loop even when every thread is busy.
    """
    registry, gate = state.registry, state.gate
    return {
        "status": "ok",
        "warmed_up": state.warmed.is_set(),  # start-up work (compressed files, lean networks) done
        "version": latentz.__version__,
        "worker": state.worker,  # which worker answered, with `latentz serve --workers N`
        "models": registry.names(),
        "problems": registry.problems,
        "web_runtime": state.web_runtime.as_json(),
        "limits": _limits(state),
        "jobs": {"running": gate.running, "waiting": gate.waiting, **gate.counts},
    }


def _limits(state: ServerState) -> dict[str, Any]:
    limits, gate = state.limits, state.gate
    return {
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
    }


def _with_file_urls(state: ServerState, summary: dict[str, Any], info: BundleInfo) -> dict[str, Any]:
    return {**summary, "files": state.model_files.urls(info, coding_files(info.path))}


@router.get("/api/models")
def list_models(request: Request, state: Server) -> Response:
    """Every installed model with its shape, data set, metrics and the URLs of its browser files
    (versioned: each URL changes with its file's content; lean copies of the networks included)."""
    registry = state.registry
    registry.rescan()
    infos = [registry.info(name) for name in registry.names()]
    models = [_with_file_urls(state, registry.summary(info), info) for info in infos]
    return assets.serve_json(request, render_json({"models": models}))


@router.get("/api/models/{name}", responses={404: ERRORS[404]})
def model_card(name: str, request: Request, state: Server) -> Response:
    """One model's summary plus its full config and card (latent_stats drive the explorer's sliders)."""
    info = state.registry.info(name)
    return assets.serve_json(request, render_json(_with_file_urls(state, state.registry.detail(info), info)))


@router.api_route("/api/models/{name}/files/{filename}", methods=["HEAD"], include_in_schema=False)
@router.get("/api/models/{name}/files/{filename}", responses=FILE_RESPONSES)
def model_file(name: str, filename: str, request: Request, state: Server) -> Response:
    """encoder.onnx, decoder.onnx or entropy_model.json of a bundle, or a lean copy of a network
    (encoder.int8.onnx, decoder.fp16.onnx, ...), for the browser; revalidated (ETag)."""
    return assets.serve_payload(request, state.model_files.payload(state.registry.info(name), filename))


@router.api_route("/api/models/{name}/files/{version}/{filename}", methods=["HEAD"], include_in_schema=False)
@router.get("/api/models/{name}/files/{version}/{filename}", responses=FILE_RESPONSES)
def versioned_model_file(name: str, version: str, filename: str, request: Request, state: Server) -> Response:
    """The same files at the URLs /api/models lists: the version is the file's content digest,
    so the answer may be cached for good (404 once the file has changed)."""
    payload = state.model_files.payload(state.registry.info(name), filename)
    assets.check_version(version, payload, f"{name}'s {filename}")
    return assets.serve_payload(request, payload, immutable=True)
