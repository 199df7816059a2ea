"""The latent space: an image's posterior, its reconstruction, samples from the prior, interpolation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field

from latentz import imaging
from latentz.runtime import ModelRuntime
from latentz.server.answers import b64, flat, json_answer
from latentz.server.dependencies import Jobs, Server
from latentz.server.errors import ERROR_RESPONSES, QUERY_ERRORS, ApiError
from latentz.server.limits import Limits
from latentz.server.reports import report_psnr
from latentz.server.uploads import open_upload_image, read_image_upload

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
IMAGES = {200: {"content": {"image/png": {}, "application/json": {}}}}

router = APIRouter(tags=["latents"])


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


@router.post(
    "/api/models/{name}/latent", responses={200: {"content": {"application/json": {}}}, **ERROR_RESPONSES}
)
async def latent(
    state: Server, jobs: Jobs, name: str, file: UploadFile = File(..., description="an image")
) -> Response:
    """The posterior mean and log-variance of an image (no quantisation), and the model's input."""
    model = await state.runtime(name)
    data = await read_image_upload(file, state.limits)

    def work() -> Response:
        prepared = model.prepare(open_upload_image(data, state.limits.max_pixels), state.sizes)
        mean, logvar = model.encode(prepared.image)
        return json_answer(
            {
                "model": model.name,
                "shape": list(mean.shape[1:]),
                "mean": flat(mean[0]),
                "logvar": flat(logvar[0]),
                "note": prepared.note,
                "input_png_base64": b64(imaging.png_bytes(prepared.image)),
            }
        )

    return await jobs.run(work)


@router.post("/api/models/{name}/reconstruct", responses={**IMAGES, **ERROR_RESPONSES})
async def reconstruct(
    state: Server,
    jobs: Jobs,
    name: str,
    file: UploadFile = File(..., description="an image"),
    format: Literal["png", "json"] = Query("png"),
) -> Response:
    """Encode then decode the posterior mean (no quantisation): PNG, or JSON with PSNR."""
    model = await state.runtime(name)
    data = await read_image_upload(file, state.limits)

    def work() -> Response:
        prepared = model.prepare(open_upload_image(data, state.limits.max_pixels), state.sizes)
        output = model.reconstruct(prepared.image)[0]
        png = imaging.png_bytes(output)
        if format == "png":
            return Response(png, media_type="image/png")
        return json_answer(
            {
                "model": model.name,
                "note": prepared.note,
                "psnr": report_psnr(prepared.image, output),
                "png_base64": b64(png),
                "input_png_base64": b64(imaging.png_bytes(prepared.image)),
            }
        )

    return await jobs.run(work)


async def images_response(
    jobs: Jobs, model: ModelRuntime, make_latents: Callable[[], np.ndarray], format: str, **extra: Any
) -> Response:
    """Decode the latents ``make_latents`` draws (in the job): a PNG grid, or latents and PNGs as JSON."""

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
                "latents": [flat(item) for item in latents],
                "images": [b64(imaging.png_bytes(image)) for image in images],
            }
        )

    return await jobs.run(work)


def sampling_router(limits: Limits) -> APIRouter:
    """GET /api/models/{name}/sample, whose ``count`` bound (in the schema too) is this app's limit."""
    sampling = APIRouter(tags=["latents"])

    @sampling.get("/api/models/{name}/sample", responses={**IMAGES, **QUERY_ERRORS})
    async def sample(
        state: Server,
        jobs: Jobs,
        name: str,
        count: int = Query(8, ge=1, le=limits.max_samples),
        seed: int = Query(0, ge=0, le=2**63 - 1),
        format: Literal["json", "png"] = Query("json", description="latents + PNGs, or one PNG grid"),
    ) -> Response:
        """Decode ``count`` latents drawn from the prior N(0, I); the same seed gives the same images."""
        model = await state.runtime(name)
        shape = model.config.latent_shape()

        def draw() -> np.ndarray:
            return np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)

        return await images_response(jobs, model, draw, format, seed=seed, count=count)

    return sampling


def interpolation_ends(body: InterpolateRequest, model: ModelRuntime, limits: Limits) -> list[np.ndarray]:
    """The two ends as float32 latents of the model's shape, or a 400 that says what is wrong."""
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
    return ends


@router.post("/api/models/{name}/interpolate", responses={**IMAGES, **ERROR_RESPONSES})
async def interpolate(
    state: Server,
    jobs: Jobs,
    name: str,
    body: InterpolateRequest,
    format: Literal["json", "png"] = Query("json", description="latents + PNGs, or one PNG strip"),
) -> Response:
    """Decode ``steps`` latents from ``start`` to ``end`` (flattened latents of this model)."""
    model = await state.runtime(name)
    start, end = interpolation_ends(body, model, state.limits)

    def line() -> np.ndarray:
        latents = interpolate_latents(start, end, body.steps, body.method)
        if not np.isfinite(latents).all():
            message = "the interpolated latents overflow float32; use smaller start and end values"
            raise ApiError(400, message)
        return latents

    return await images_response(jobs, model, line, format, steps=body.steps, method=body.method)
