"""One image to one .latentz file and back: the jobs `latentz encode` and `latentz decode` run, in
this process or in a folder's worker processes (plain data in, an `Outcome` out).

Torch-free: both run on `latentz.runtime`. Outputs are created exclusively (a temporary file is
hard-linked into place, which fails if the name is taken), so nothing is ever overwritten unless
``--force``, not even by another `latentz` process writing into the same folder at the same moment.
"""

from __future__ import annotations

import functools
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentz.commands import user_errors
from latentz.commands.codec.folders import EXISTS, FAILED, SKIPPED, Outcome, milliseconds

if TYPE_CHECKING:
    from latentz.bundle import BundleInfo
    from latentz.codec.limits import SizeLimits

LATENTZ_SUFFIX = ".latentz"
DEFAULT_CODED_PIXELS = 4_194_304
"""`SizeLimits.max_coded_pixels`'s default, kept literal so that --help does not import numpy."""
MAX_CODED_PIXELS_HELP = (
    "Most pixels a photo model codes at once (default 4,194,304 = 2048x2048, about 0.9 GB to decode): "
    "bigger images are scaled down, bigger files refused."
)
DECODED_SUFFIX = ".png"
"""Folder decode writes PNG (lossless); a single file is written in the format its name gives."""

IMAGE_OUTPUTS: dict[str, tuple[str, dict[str, object]]] = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": 95, "subsampling": 0}),
    ".jpeg": ("JPEG", {"quality": 95, "subsampling": 0}),
    ".webp": ("WEBP", {"lossless": True}),
    ".bmp": ("BMP", {}),
    ".tif": ("TIFF", {}),
    ".tiff": ("TIFF", {}),
}
"""What `latentz decode -o NAME` writes, by NAME's extension: JPEG at quality 95 (4:4:4), WebP lossless."""
IMAGE_OUTPUTS_TEXT = ".png, .jpg/.jpeg (JPEG quality 95), .webp (lossless WebP), .bmp or .tif/.tiff"
IMAGE_SUFFIXES = (*IMAGE_OUTPUTS, ".gif")


@dataclass(frozen=True)
class EncodeJob:
    """One image to compress; plain data so it can travel to a worker process. ``model`` None: the
    installed model that fits this image (`latentz.choice`); ``quality`` and ``step`` None: the
    model's recommended quality."""

    model: str | None
    source: Path
    target: Path
    quality: int | None
    step: float | None
    force: bool
    skip_existing: bool = False
    max_coded_pixels: int = DEFAULT_CODED_PIXELS
    target_bytes: int | None = None
    target_psnr: float | None = None


@dataclass(frozen=True)
class DecodeJob:
    """One .latentz file to decode; ``model`` None means: find it by the file's fingerprint."""

    model: str | None
    source: Path
    target: Path
    force: bool
    skip_existing: bool = False
    max_coded_pixels: int = DEFAULT_CODED_PIXELS


def _limits(max_coded_pixels: int) -> SizeLimits:
    from latentz.codec.limits import SizeLimits

    return SizeLimits(max_coded_pixels=max_coded_pixels, raise_with="--max-coded-pixels")


def _check_target(target: Path, force: bool) -> None:
    """Refuse early (before any work) an output that is already there; the write checks again."""
    from latentz.bundle import TargetExistsError

    if not force and os.path.lexists(target):
        raise TargetExistsError(target)


def _write(target: Path, data: bytes, force: bool) -> None:
    from latentz.bundle import atomic_write_bytes

    atomic_write_bytes(target, data, overwrite=force)


def _ratio(original: int, coded: int) -> str:
    """'3.2x smaller' or '1.03x larger than the input': a bigger file is never called smaller."""
    if coded == original:
        return "the same size as the input"
    factor = original / coded if coded < original else coded / original
    shown = f"{factor:.2f}" if factor < 10 else f"{factor:.1f}"
    return f"{shown}x smaller" if coded < original else f"{shown}x larger than the input"


_WARM: set[tuple[str, bool]] = set()


def _warm_up(runtime: Any, encoder: bool) -> None:
    """Run the whole pipeline once per process on a blank image, outside the timing, so the time
    printed per file is the file's, not start-up (Pillow's plugins, the range coder and ONNX
    Runtime's first run cost 100-300 ms on the first digit)."""
    import numpy as np

    from latentz import imaging

    key = (str(runtime.info.path), encoder)
    if key in _WARM:
        return
    config = runtime.config
    blank = np.zeros((config.image_size, config.image_size, config.channels), np.uint8)
    if encoder:
        data = runtime.compress(runtime.prepare(imaging.png_bytes(blank)).image)
    else:  # a receiver may have no encoder: a zero latent, coded directly
        data = runtime.blank_file()
    runtime.decompress(data)
    _WARM.add(key)


@functools.cache
def _warm_pillow() -> None:
    """Open one image per process outside the timing: Pillow registers its plugins on first use."""
    import numpy as np

    from latentz import imaging

    imaging.open_image(imaging.png_bytes(np.zeros((8, 8, 1), np.uint8)))


@functools.cache
def installed_models() -> tuple[BundleInfo, ...]:
    """The installed models that can encode, read once per process (the choice rule's candidates)."""
    from latentz import choice

    return tuple(choice.encoding_models())


def _model_for(
    model: str | None, width: int, height: int, channels: int
) -> tuple[Any, str | None, str | None, str | None]:
    """The runtime to encode an image with, and why (None when the user named it), what kind of
    model it is, and a warning when the image does not fit it."""
    from latentz import choice
    from latentz import runtime as rt

    if model is None:
        picked = choice.choose_model(width, height, channels, installed_models())
        return rt.load(picked.info.path), picked.reason, picked.kind, picked.warning
    runtime = rt.load(model)
    return runtime, None, None, choice.fit_warning(runtime.info, width, height, channels, installed_models())


def encode_file(job: EncodeJob) -> Outcome:
    """Compress one image, check the round trip, write the file; raises on bad input.

    The time is the file's own: opening, preparing and compressing it, not the choice of model or
    the one-off start-up of each model (see `_warm_up`).
    """
    from latentz import choice, codec, imaging, metrics

    _check_target(job.target, job.force)
    limits = _limits(job.max_coded_pixels)
    _warm_pillow()
    started = time.perf_counter()
    image = imaging.open_image(job.source, max_pixels=limits.max_image_pixels)
    opening = time.perf_counter() - started
    width, height = image.size
    channels = choice.image_channels(image)
    runtime, model_reason, model_kind, warning = _model_for(job.model, width, height, channels)
    quality, quality_reason = job.quality, None
    targeted = job.target_bytes is not None or job.target_psnr is not None
    if quality is None and job.step is None and not targeted:
        recommended = choice.recommended_quality(runtime.config)
        quality, quality_reason = recommended.quality, recommended.reason
    _warm_up(runtime, encoder=True)
    started = time.perf_counter()
    prepared = runtime.prepare(image, limits)
    data, quality, reached = _compress(runtime, prepared.image, job, quality)
    fine_step = codec.step_from_units(job.step) if job.step is not None else codec.step_for_quality(quality)
    seconds = opening + time.perf_counter() - started
    decoded = runtime.decompress(data, limits)
    _write(job.target, data, job.force)
    original_bytes = job.source.stat().st_size
    psnr = metrics.psnr(prepared.image[None], decoded[None])
    coded_height, coded_width = prepared.image.shape[:2]
    ratio = _ratio(original_bytes, len(data))
    bpp = 8 * len(data) / (coded_width * coded_height)
    return Outcome(
        job.source,
        (f"{job.source.name}: {reached.message}\n" if reached else "")
        + f"{job.source.name}: {original_bytes:,} B -> {len(data):,} B ({ratio}), "
        f"{bpp:.3f} bpp, PSNR {psnr:.2f} dB, {milliseconds(seconds)}; {prepared.note}",
        target=job.target,
        coded_bytes=len(data),
        bpp=bpp,
        psnr=psnr,
        seconds=seconds,
        model=runtime.name,
        model_reason=model_reason,
        model_kind=model_kind,
        quality=quality,
        quality_reason=quality_reason,
        step=fine_step / codec.FINE_PER_UNIT,
        note=prepared.note,
        warning=warning,
        input_bytes=original_bytes,
        width=coded_width,
        height=coded_height,
        reached=reached.record() if reached else None,
    )


def _compress(runtime: Any, image: Any, job: EncodeJob, quality: int | None) -> tuple[bytes, int, Any]:
    """The file at ``quality`` (or ``job.step``), or at the quality `latentz.targets` finds for the
    job's byte or PSNR target: the bytes, the quality used and the target's result (None without)."""
    if job.target_bytes is None and job.target_psnr is None:
        return runtime.compress(image, quality=quality, step=job.step), quality, None  # type: ignore[return-value]
    from latentz.targets import encode_to_target

    result = encode_to_target(runtime, image, target_bytes=job.target_bytes, target_psnr=job.target_psnr)
    return result.data, result.quality, result


def read_latentz_file(path: Path) -> bytes:
    """A .latentz file's bytes, refusing one over the format's size cap from its size on disk, unread."""
    from latentz.codec import LatentzFormatError
    from latentz.codec.format import MAX_FILE_BYTES

    if not path.is_file():
        raise LatentzFormatError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise LatentzFormatError(
            f"{path} is {size:,} bytes, more than the {MAX_FILE_BYTES:,} a .latentz file may have (not read)"
        )
    with open(path, "rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)  # bounded even if the file grows after the check
    if len(data) > MAX_FILE_BYTES:
        raise LatentzFormatError(f"{path} grew past the {MAX_FILE_BYTES:,} bytes a .latentz file may have")
    return data


def image_output_format(target: Path) -> tuple[str, dict[str, object]]:
    """Pillow format and options for a decoded image, from its name's extension; refuses any other."""
    from latentz.imaging import ImageError

    try:
        return IMAGE_OUTPUTS[target.suffix.lower()]
    except KeyError:
        got = f"unknown image type '{target.suffix}'" if target.suffix else "no extension"
        raise ImageError(
            f"{target}: {got}; the extension picks the format: name it {IMAGE_OUTPUTS_TEXT}"
        ) from None


def decode_file(job: DecodeJob) -> Outcome:
    """Decode one .latentz file with its model and write the image; raises on bad input."""
    from PIL import Image

    from latentz import codec
    from latentz import runtime as rt

    fmt, options = image_output_format(job.target)
    _check_target(job.target, job.force)
    data = read_latentz_file(job.source)
    header, payload = codec.unpack(data)  # once: the model is found from this header
    runtime = rt.load(job.model) if job.model else rt.model_for_header(header)
    _warm_up(runtime, encoder=False)
    started = time.perf_counter()
    image = runtime.decompress_parsed(header, payload, _limits(job.max_coded_pixels))
    seconds = time.perf_counter() - started
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **options)
    _write(job.target, buffer.getvalue(), job.force)
    height, width = image.shape[:2]
    return Outcome(
        job.source,
        f"{job.source.name} -> {job.target} ({width}x{height}, {runtime.name}, {milliseconds(seconds)})",
        target=job.target,
        coded_bytes=len(data),
        bpp=8 * len(data) / (width * height),
        seconds=seconds,
        model=runtime.name,
        step=header.step / codec.FINE_PER_UNIT,
        note=f"{width}x{height} {fmt}",
        input_bytes=len(data),
        width=width,
        height=height,
    )


def _guarded(work: Callable[[EncodeJob | DecodeJob], Outcome], job: EncodeJob | DecodeJob) -> Outcome:
    """Run one job; a user error becomes a failed outcome, so one bad file never stops the rest."""
    from latentz.bundle import TargetExistsError

    try:
        return work(job)
    except TargetExistsError as error:  # there before the run, or made meanwhile by another process
        status = SKIPPED if job.skip_existing else EXISTS
        return Outcome(job.source, f"{job.source.name}: {error}", status, target=job.target, note=str(error))
    except user_errors() as error:
        return Outcome(job.source, f"{job.source.name}: {error}", FAILED, error=str(error))


def guarded_encode(job: EncodeJob) -> Outcome:
    return _guarded(encode_file, job)  # type: ignore[arg-type]


def guarded_decode(job: DecodeJob) -> Outcome:
    return _guarded(decode_file, job)  # type: ignore[arg-type]
