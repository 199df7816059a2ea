"""Rate-distortion of the latentz codec against JPEG and WebP on the same images, and BD-rate.

Rates are real file sizes: every latentz point is the mean length of complete .latentz files
(header and checksum included), every JPEG/WebP point the mean length of the files Pillow writes.
Distortion is measured on the image the codec was given (for a fixed-size model, the
centre-cropped and resized image it sees, which is also what JPEG and WebP get).

Results follow CompressAI's layout, one object per codec::

    {"name": "webp", "description": "...", "results": {"quality": [...], "bytes": [...],
     "bpp": [...], "psnr": [...], "ssim": [...], "ms-ssim": [...]}}

Torch-free: it runs the bundle through `latentz.runtime`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latentz import codec, imaging, metrics
from latentz.runtime import ModelRuntime

LATENTZ_QUALITIES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
CLASSIC_QUALITIES = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
CLASSIC_CODECS = ("webp", "jpeg")
DECODE_BATCH = 64


@dataclass(frozen=True)
class RDPoint:
    """One quality setting: mean file bytes and mean per-image quality over the images."""

    quality: int
    bytes: float
    bpp: float
    psnr: float
    ssim: float | None
    ms_ssim: float | None


def _quality_metrics(originals: np.ndarray, decoded: np.ndarray) -> tuple[float, float | None, float | None]:
    """Mean per-image PSNR; SSIM and MS-SSIM where the images are large enough for them."""
    side = min(originals.shape[1:3])
    ssim = metrics.ssim(originals, decoded) if side >= metrics.SSIM_WINDOW else None
    ms_ssim = metrics.ms_ssim(originals, decoded) if side >= metrics.ms_ssim_min_size() else None
    return metrics.psnr(originals, decoded), ssim, ms_ssim


def _point(quality: int, sizes: Sequence[int], originals: np.ndarray, decoded: np.ndarray) -> RDPoint:
    pixels = originals.shape[1] * originals.shape[2]
    mean_bytes = float(np.mean(sizes))
    psnr, ssim, ms_ssim = _quality_metrics(originals, decoded)
    return RDPoint(quality, mean_bytes, mean_bytes * 8 / pixels, psnr, ssim, ms_ssim)


def measure_latentz(
    runtime: ModelRuntime, images: np.ndarray, qualities: Sequence[int] = LATENTZ_QUALITIES
) -> list[RDPoint]:
    """Each image is encoded once; its posterior mean is then coded at every quality.

    ``images`` are uint8 ``(N, H, W, C)`` at a size the model takes (all the same size).
    """
    means = np.concatenate(
        [runtime.encode(images[i : i + DECODE_BATCH])[0] for i in range(0, len(images), DECODE_BATCH)]
    )
    height, width, channels = images.shape[1:]
    points = []
    for quality in qualities:
        step = codec.step_for_quality(quality)
        files = [
            codec.encode_latent(
                mean,
                entropy=runtime.entropy,
                step=step,
                fingerprint=runtime.fingerprint,
                height=height,
                width=width,
                channels=channels,
            )
            for mean in means
        ]
        latents = np.stack([runtime.read(data)[1] for data in files])
        decoded = np.concatenate(
            [
                runtime.decode(latents[i : i + DECODE_BATCH], height, width)
                for i in range(0, len(latents), DECODE_BATCH)
            ]
        )
        points.append(_point(quality, [len(f) for f in files], images, decoded))
    return points


def measure_classic(
    images: np.ndarray, fmt: str, qualities: Sequence[int] = CLASSIC_QUALITIES
) -> list[RDPoint]:
    """JPEG or WebP through Pillow at each quality; decoded back to the same channel count."""
    channels = images.shape[3]
    points = []
    for quality in qualities:
        files = [imaging.encode_with(image, fmt, quality) for image in images]
        decoded = np.stack([imaging.load_array(data, None, channels) for data in files])
        points.append(_point(quality, [len(f) for f in files], images, decoded))
    return points


def to_compressai(name: str, description: str, points: Sequence[RDPoint]) -> dict[str, Any]:
    """CompressAI's results layout: parallel lists per metric."""
    results: dict[str, list[Any]] = {
        "quality": [p.quality for p in points],
        "bytes": [p.bytes for p in points],
        "bpp": [p.bpp for p in points],
        "psnr": [p.psnr for p in points],
    }
    if all(p.ssim is not None for p in points):
        results["ssim"] = [p.ssim for p in points]
    if all(p.ms_ssim is not None for p in points):
        results["ms-ssim"] = [p.ms_ssim for p in points]
    return {"name": name, "description": description, "results": results}


# -- BD-rate --------------------------------------------------------------------------------------
def _envelope(rates: Sequence[float], quality: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Points sorted by quality keeping only those that cost more for more quality (the useful
    curve); a setting that gives lower quality at a higher rate is never worth choosing."""
    order = np.argsort(quality, kind="stable")
    kept_q: list[float] = []
    kept_r: list[float] = []
    for index in order:
        q, r = float(quality[index]), float(rates[index])
        if not (math.isfinite(q) and math.isfinite(r) and r > 0):
            continue
        while kept_r and kept_r[-1] >= r:  # an earlier point that costs as much for less quality
            kept_r.pop()
            kept_q.pop()
        if kept_q and q == kept_q[-1]:
            continue
        kept_q.append(q)
        kept_r.append(r)
    return np.asarray(kept_q), np.log(np.asarray(kept_r))


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
) -> float | None:
    """Bjøntegaard delta rate in percent: how much more (positive) or less (negative) rate the test
    codec needs than the anchor for the same quality, averaged over the quality range both reach.

    Log-rate is interpolated piecewise-linearly in quality on each curve's useful envelope and
    integrated over the overlap (the piecewise variant avoids the cubic fit's wild swings on
    curves with few or uneven points). None when the curves share no quality range.
    """
    anchor_q, anchor_log = _envelope(anchor_rates, anchor_quality)
    test_q, test_log = _envelope(test_rates, test_quality)
    if len(anchor_q) < 2 or len(test_q) < 2:
        return None
    low, high = max(anchor_q[0], test_q[0]), min(anchor_q[-1], test_q[-1])
    if not high > low:
        return None
    grid = np.linspace(low, high, 512)
    difference = np.interp(grid, test_q, test_log) - np.interp(grid, anchor_q, anchor_log)
    mean_difference = float(np.sum((difference[1:] + difference[:-1]) / 2) / (len(grid) - 1))
    return (math.exp(mean_difference) - 1) * 100


def overlap(a: Sequence[RDPoint], b: Sequence[RDPoint]) -> tuple[float, float] | None:
    """The PSNR interval both curves reach, or None."""
    low = max(min(p.psnr for p in a), min(p.psnr for p in b))
    high = min(max(p.psnr for p in a), max(p.psnr for p in b))
    return (low, high) if high > low else None


def compare(
    runtime: ModelRuntime,
    images: np.ndarray,
    *,
    qualities: Sequence[int] = LATENTZ_QUALITIES,
    classic_qualities: Sequence[int] = CLASSIC_QUALITIES,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole comparison on one set of images: every codec's curve and BD-rates vs each classic."""
    say = progress or (lambda _message: None)
    say(f"latentz {runtime.name}")
    curves = {"latentz": measure_latentz(runtime, images, qualities)}
    for fmt in CLASSIC_CODECS:
        say(fmt)
        curves[fmt] = measure_classic(images, fmt, classic_qualities)
    ours = curves["latentz"]
    summary: dict[str, Any] = {}
    for fmt in CLASSIC_CODECS:
        theirs = curves[fmt]
        span = overlap(ours, theirs)
        summary[fmt] = {
            "bd_rate_percent": bd_rate(
                [p.bytes for p in theirs],
                [p.psnr for p in theirs],
                [p.bytes for p in ours],
                [p.psnr for p in ours],
            ),
            "psnr_overlap_db": list(span) if span else None,
        }
    height, width, channels = images.shape[1:]
    descriptions = {
        "latentz": f"latentz {runtime.name}: quantised posterior mean, range-coded; whole .latentz files",
        "webp": "WebP (Pillow, method 6)",
        "jpeg": "JPEG (Pillow, 4:2:0, optimised Huffman)",
    }
    return {
        "model": runtime.name,
        "fingerprint": runtime.fingerprint,
        "n_images": len(images),
        "image": f"{width}x{height}x{channels}",
        "codecs": {name: to_compressai(name, descriptions[name], points) for name, points in curves.items()},
        "bd_rate_vs": summary,
        "best_latentz": max((p.psnr for p in ours), default=None),
        "note": (
            "rates are whole files in bytes (bpp = 8 * bytes / pixels); PSNR is the mean of per-image "
            "PSNRs; BD-rate is latentz's rate change against each classic codec at equal PSNR over "
            "the PSNR range both reach (negative = latentz smaller)"
        ),
    }
