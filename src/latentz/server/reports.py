"""The codec page's report on an encode: sizes, the model's input, the reconstruction, WebP at the same
budget, and notes on what the codec did to the upload."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from latentz import codec, imaging, metrics
from latentz.codec.limits import SizeLimits
from latentz.runtime import ModelRuntime, Prepared
from latentz.server.answers import b64


def report_psnr(original: np.ndarray, decoded: np.ndarray) -> float | None:
    """PSNR for a JSON report: null when the images are identical (infinite PSNR, which JSON cannot
    carry; a flat grey photo decodes exactly)."""
    value = metrics.psnr(original, decoded)
    return value if math.isfinite(value) else None


def _webp_at_budget(image: np.ndarray, budget: int) -> dict[str, Any]:
    """The best WebP no bigger than ``budget`` bytes, or its smallest, as the report shows it."""
    quality, data, fits = imaging.webp_within(image, budget)
    decoded = imaging.decode_baseline(data, image.shape[2])
    return {
        "bytes": len(data),
        "quality": quality,
        "fits_budget": fits,
        "psnr": report_psnr(image, decoded),
        "webp_base64": b64(data),
        "note": (
            f"WebP quality {quality}, the best that fits in {budget:,} bytes"
            if fits
            else f"even WebP quality 0 takes {len(data):,} bytes, more than the {budget:,}-byte budget"
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


@dataclass(frozen=True)
class EncodeSettings:
    """The model and quality an upload is coded with, and why, as the JSON report says them."""

    model: ModelRuntime
    quality: int
    model_reason: str | None  # set when the server chose the model (`POST /api/encode`)
    quality_reason: str | None  # set when the quality is the model's recommended one
    warning: str | None  # the model does not fit the image (`latentz.choice.fit_warning`)
    better_model: str | None  # the installed model that fits it, when ``model`` does not


def encode_report(
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
    header, payload = codec.unpack(blob)
    reconstruction = model.decompress_parsed(header, payload, sizes)
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
        "step": header.step if header.version == 1 else None,  # format v2 codes a quality, no step
        "format_version": header.version,
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
            "png_base64": b64(imaging.png_bytes(prepared.image)),
        },
        "latentz": {
            "bytes": len(blob),
            "header_bytes": codec.header_bytes(header),
            "filename": filename,
            "base64": b64(blob),
            "latent_shape": list(header.latent_shape),
        },
        "reconstruction": {
            "png_base64": b64(imaging.png_bytes(reconstruction)),
            "psnr": report_psnr(prepared.image, reconstruction),
        },
        "webp": webp,
        "ratio": len(upload) / len(blob),
        "raw_ratio": prepared.image.size / len(blob),
        "bits_per_pixel": 8 * len(blob) / (height * width),
    }
