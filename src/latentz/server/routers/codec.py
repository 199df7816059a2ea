"""Images to .latentz files and back: encode (the server's choice of model, or a named one), decode, read."""

from __future__ import annotations

import dataclasses
from typing import Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from latentz import choice, codec, imaging
from latentz import targets as targets_module
from latentz.runtime import ModelRuntime
from latentz.server.answers import flat, json_answer
from latentz.server.dependencies import Jobs, Server, ServerState
from latentz.server.errors import ERROR_RESPONSES, ApiError, model_errors
from latentz.server.reports import EncodeSettings, encode_report, upload_notes
from latentz.server.uploads import (
    download_name,
    open_upload_image,
    parse_latentz,
    read_image_upload,
    read_upload,
)

router = APIRouter(tags=["codec"])

LATENTZ_MEDIA_TYPE = "application/x-latentz"
QUALITY_FIELD_DESCRIPTION = (
    "0..100, higher is better; without it, the model's recommended quality "
    "(`recommended_quality` in GET /api/models: 50 for photo models, 30 for mnist-z32)"
)
ENCODE_DESCRIPTION = (
    "With ``format=json``: the file as base64, the reconstruction, its PSNR and a WebP of the same "
    "image at the same byte budget; the model and quality used and why (``model_reason``, "
    "``quality_reason``), a ``warning`` sentence when the model does not fit the image (and "
    "``better_model``), and ``notes`` on what was changed (transparency composited on white, the "
    "first frame of an animation). The file answer says the model and quality in ``X-Latentz-Model`` "
    "and ``X-Latentz-Quality``."
)
ENCODE_RESPONSES = {200: {"content": {LATENTZ_MEDIA_TYPE: {}, "application/json": {}}}, **ERROR_RESPONSES}
PNG_RESPONSES = {200: {"content": {"image/png": {}}}, **ERROR_RESPONSES}


def encode_settings(
    state: ServerState, image: Image.Image, named: ModelRuntime | None, quality: int | None
) -> EncodeSettings:
    """The model (``named``, else the one `latentz.choice` picks for the image) and the quality
    (``quality``, else the model's recommended one), with the reasons and misfit warning."""
    width, height = image.size
    channels = choice.image_channels(image)
    candidates = state.registry.encoding_infos()
    if named is None:
        try:
            picked = choice.choose_model(width, height, channels, candidates)
        except choice.NoModelError:
            message = "no installed model can encode: install one, or export one with `latentz export MODEL`"
            raise ApiError(409, message, "model_not_exported") from None
        model = state.registry.runtime(picked.name)
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


TARGET_BYTES_DESCRIPTION = (
    "instead of a quality: the largest file of at most this many bytes (the highest quality that fits; "
    "quality 0 and ``met`` false in the JSON report when even that is bigger)"
)
TARGET_PSNR_DESCRIPTION = "instead of a quality: the smallest file whose decoded PSNR reaches this many dB"


async def encode_upload(
    state: ServerState,
    jobs: Jobs,
    named: ModelRuntime | None,
    file: UploadFile,
    quality: int | None,
    format: Literal["latentz", "json"],
    targets: tuple[int | None, float | None] = (None, None),
) -> Response:
    target = targets_module.check_targets(*targets, quality)
    data = await read_image_upload(file, state.limits)

    def work() -> Response:
        image = open_upload_image(data, state.limits.max_pixels)
        settings = encode_settings(state, image, named, quality)
        model = settings.model
        notes = upload_notes(image, data)
        prepared = model.prepare(image, state.sizes)
        reached = None
        if target is None:
            blob = model.compress(prepared.image, quality=settings.quality)
        else:
            kind, value = target
            reached = targets_module.encode_to_target(model, prepared.image, **{f"target_{kind}": value})
            blob = reached.data
            settings = dataclasses.replace(settings, quality=reached.quality, quality_reason=reached.message)
        download = download_name(file.filename, ".latentz")
        if format == "json":
            report = encode_report(settings, data, image.format, prepared, blob, notes, download, state.sizes)
            if reached is not None:
                report = {**report, **reached.record()}
            return json_answer(report)
        headers = {
            "Content-Disposition": f'attachment; filename="{download}"',
            "X-Latentz-Model": model.name,
            "X-Latentz-Quality": str(settings.quality),
        }
        return Response(blob, media_type=LATENTZ_MEDIA_TYPE, headers=headers)

    return await jobs.run(work)


@router.post(
    "/api/encode",
    responses=ENCODE_RESPONSES,
    description="Compress an image to a .latentz file with the installed model that fits it (a small "
    "grey image: the digit codec; a colour photo: the photo codec nearest its size; the rule of "
    "`latentz.choice`, as `latentz encode` without -m), or with ``model``. " + ENCODE_DESCRIPTION,
)
async def encode_any(
    state: Server,
    jobs: Jobs,
    file: UploadFile = File(..., description="an image (JPEG, PNG, WebP, ...; judged by content)"),
    quality: int | None = Form(None, ge=0, le=100, description=QUALITY_FIELD_DESCRIPTION),
    format: Literal["latentz", "json"] = Query("latentz", description="the file, or a JSON report"),
    model: str | None = Query(None, description="code with this model instead of the one that fits"),
    target_bytes: int | None = Form(None, ge=1, description=TARGET_BYTES_DESCRIPTION),
    target_psnr: float | None = Form(None, gt=0, allow_inf_nan=False, description=TARGET_PSNR_DESCRIPTION),
) -> Response:
    named = await state.runtime(model) if model else None
    return await encode_upload(state, jobs, named, file, quality, format, (target_bytes, target_psnr))


@router.post(
    "/api/models/{name}/encode",
    responses=ENCODE_RESPONSES,
    description="Compress an image to a .latentz file with this model. " + ENCODE_DESCRIPTION,
)
async def encode(
    state: Server,
    jobs: Jobs,
    name: str,
    file: UploadFile = File(..., description="an image (JPEG, PNG, WebP, ...; judged by content)"),
    quality: int | None = Form(None, ge=0, le=100, description=QUALITY_FIELD_DESCRIPTION),
    format: Literal["latentz", "json"] = Query("latentz", description="the file, or a JSON report"),
    target_bytes: int | None = Form(None, ge=1, description=TARGET_BYTES_DESCRIPTION),
    target_psnr: float | None = Form(None, gt=0, allow_inf_nan=False, description=TARGET_PSNR_DESCRIPTION),
) -> Response:
    named = await state.runtime(name)
    return await encode_upload(state, jobs, named, file, quality, format, (target_bytes, target_psnr))


async def file_and_model(
    state: ServerState, upload: UploadFile, name: str | None
) -> tuple[bytes, codec.Header, bytes, ModelRuntime]:
    """The upload, its checked header, its payload and the model to run it with, before it may
    queue (the file is unpacked here, once)."""
    data = await read_upload(upload, state.limits)

    def check() -> tuple[codec.Header, bytes, ModelRuntime]:
        header, payload = parse_latentz(data)  # CRC over the whole file: a thread, not the event loop
        model = state.registry.runtime(name) if name else state.registry.for_header(header)
        with model_errors():
            model.check_header(header, state.sizes)  # declared sizes judged before the file may queue
        return header, payload, model

    header, payload, model = await run_in_threadpool(check)
    return data, header, payload, model


async def decode_png(state: ServerState, jobs: Jobs, upload: UploadFile, name: str | None) -> Response:
    _, header, payload, model = await file_and_model(state, upload, name)

    def work() -> Response:
        return Response(
            imaging.png_bytes(model.decompress_parsed(header, payload, state.sizes)),
            media_type="image/png",
            headers={"X-Latentz-Model": model.name, "X-Latentz-Size": f"{header.width}x{header.height}"},
        )

    return await jobs.run(work)


@router.post("/api/decode", responses=PNG_RESPONSES)
async def decode_any(
    state: Server,
    jobs: Jobs,
    file: UploadFile = File(..., description="a .latentz file"),
    model: str | None = Query(None, description="decode with this model instead of the file's own"),
) -> Response:
    """Decode a .latentz file to PNG with the installed model whose fingerprint it carries."""
    return await decode_png(state, jobs, file, model)


@router.post("/api/models/{name}/decode", responses=PNG_RESPONSES)
async def decode_with(
    state: Server, jobs: Jobs, name: str, file: UploadFile = File(..., description="a .latentz file")
) -> Response:
    """Decode a .latentz file with this model; 409 if the file was made by another one."""
    return await decode_png(state, jobs, file, name)


@router.post("/api/read", responses={200: {"content": {"application/json": {}}}, **ERROR_RESPONSES})
async def read_file(
    state: Server,
    jobs: Jobs,
    file: UploadFile = File(..., description="a .latentz file"),
    model: str | None = Query(None, description="check against this model instead of the file's own"),
) -> Response:
    """Parse and entropy-decode a .latentz file on the server: its header and dequantised latent.

    The receiver page runs the model's decoder.onnx on this latent in the browser.
    """
    data, parsed, payload, runtime_model = await file_and_model(state, file, model)

    def work() -> Response:
        header, latent_values = runtime_model.read_parsed(parsed, payload, state.sizes)
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
                "format_version": header.version,
                # Version 1 codes a step (in posterior stds); versions 2 and 3 code a quality.
                "step": header.step if header.version == 1 else None,
                "step_units": header.step / codec.FINE_PER_UNIT if header.version == 1 else None,
                "quality": header.quality if header.version != 1 else None,
                "latent": flat(latent_values),
                "decoder": state.model_files.browser_decoder(state.registry.info(runtime_model.name)),
            }
        )

    return await jobs.run(work)
