"""Rate-distortion of the latentz codec against JPEG, WebP and AVIF on the same images, and BD-rate.

Rates are real file sizes: every latentz point is the mean length of complete .latentz files
(header and checksum included), every JPEG/WebP/AVIF point the mean length of the files Pillow
writes. Distortion is measured on the image the codec was given, the same pixels for every codec:
at a square size, the centre-cropped and resized image the model sees; at the photos' own size
(a fully convolutional model, `compare` given a list), each photo whole, which the spatial model
pads to whole latent cells internally and crops back, so PSNR is always on the same pixels.

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
from latentz.hyper_runtime import HyperpriorRuntime
from latentz.runtime import ModelRuntime

LATENTZ_QUALITIES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
CLASSIC_QUALITIES = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
CLASSIC_CODECS = ("webp", "avif", "jpeg")
DECODE_BATCH = 64
PSNR_CEILING_DB = 60.0
"""Each image's PSNR is capped here before averaging: one image coded exactly (AVIF does that to
some digits even at quality 0) would otherwise make the mean infinite. libvmaf caps 8-bit PSNR at
the same 60 dB (6 * bit depth + 12)."""
CODEC_DESCRIPTIONS = {
    "webp": "WebP (Pillow, method 6)",
    "avif": f"AVIF (Pillow's libavif, AOM encoder, speed {imaging.AVIF_SPEED}, 4:2:0, one thread)",
    "jpeg": "JPEG (Pillow, 4:2:0, optimised Huffman)",
}

Images = np.ndarray | Sequence[np.ndarray]
"""uint8 ``(N, H, W, C)`` images of one size, or a sequence of ``(H, W, C)`` images of any sizes."""


@dataclass(frozen=True)
class RDPoint:
    """One quality setting: mean file bytes and mean per-image quality over the images."""

    quality: int
    bytes: float
    bpp: float
    psnr: float
    ssim: float | None
    ms_ssim: float | None


def same_shape_groups(images: Images) -> list[np.ndarray]:
    """The images as ``(n, H, W, C)`` batches of one shape each, so networks and metrics run on
    whole batches whether the set is one size (a 4-D array, one group) or each photo its own size."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [images] if len(images) else []
    by_shape: dict[tuple[int, ...], list[np.ndarray]] = {}
    for image in images:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3:
            raise imaging.ImageError(f"expected uint8 (H, W, C) images, got {image.dtype} {image.shape}")
        by_shape.setdefault(image.shape, []).append(image)
    return [np.stack(group) for group in by_shape.values()]


def _quality_metrics(
    originals: Sequence[np.ndarray], decoded: Sequence[np.ndarray]
) -> tuple[float, float | None, float | None]:
    """Mean per-image PSNR (each capped at `PSNR_CEILING_DB`); SSIM and MS-SSIM where every image
    is large enough for them."""
    count = sum(len(group) for group in originals)
    per_image = np.concatenate(
        [metrics.psnr_per_image(a, b) for a, b in zip(originals, decoded, strict=True)]
    )
    psnr = float(np.mean(np.minimum(per_image, PSNR_CEILING_DB)))
    side = min(min(group.shape[1:3]) for group in originals)

    def mean_of(metric: Callable[[np.ndarray, np.ndarray], float]) -> float:
        return sum(metric(a, b) * len(a) for a, b in zip(originals, decoded, strict=True)) / count

    ssim = mean_of(metrics.ssim) if side >= metrics.SSIM_WINDOW else None
    ms_ssim = mean_of(metrics.ms_ssim) if side >= metrics.ms_ssim_min_size() else None
    return psnr, ssim, ms_ssim


def _point(
    quality: int,
    sizes: Sequence[Sequence[int]],
    originals: Sequence[np.ndarray],
    decoded: Sequence[np.ndarray],
) -> RDPoint:
    """Mean bytes per image and mean bits per pixel of each image (equal when all are one size)."""
    all_sizes = np.concatenate([np.asarray(group_sizes, dtype=np.float64) for group_sizes in sizes])
    bpp = np.concatenate(
        [
            np.asarray(group_sizes) * 8 / (group.shape[1] * group.shape[2])
            for group_sizes, group in zip(sizes, originals, strict=True)
        ]
    )
    psnr, ssim, ms_ssim = _quality_metrics(originals, decoded)
    return RDPoint(quality, float(np.mean(all_sizes)), float(np.mean(bpp)), psnr, ssim, ms_ssim)


def measure_latentz(
    runtime: ModelRuntime, images: Images, qualities: Sequence[int] = LATENTZ_QUALITIES
) -> list[RDPoint]:
    """Each image is encoded once; its posterior mean is then coded at every quality.

    ``images`` are at a size the model takes: one size as ``(N, H, W, C)``, or for a fully
    convolutional model a list of photos each at its own size.
    """
    groups = same_shape_groups(images)
    if isinstance(runtime, HyperpriorRuntime):
        return _measure_files(runtime, groups, qualities)
    means = [
        np.concatenate(
            [runtime.encode(group[i : i + DECODE_BATCH])[0] for i in range(0, len(group), DECODE_BATCH)]
        )
        for group in groups
    ]
    points = []
    for quality in qualities:
        step = codec.step_for_quality(quality)
        sizes: list[list[int]] = []
        decoded: list[np.ndarray] = []
        for group, group_means in zip(groups, means, strict=True):
            height, width, channels = group.shape[1:]
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
                for mean in group_means
            ]
            latents = np.stack([runtime.read(data)[1] for data in files])
            decoded.append(
                np.concatenate(
                    [
                        runtime.decode(latents[i : i + DECODE_BATCH], height, width)
                        for i in range(0, len(latents), DECODE_BATCH)
                    ]
                )
            )
            sizes.append([len(f) for f in files])
        points.append(_point(quality, sizes, groups, decoded))
    return points


def _measure_files(
    runtime: ModelRuntime, groups: list[np.ndarray], qualities: Sequence[int]
) -> list[RDPoint]:
    """Every image compressed and decompressed at every quality through the runtime's own file path
    (the rate-distortion codec's hyper-latent depends on nothing but the image, so nothing is shared)."""
    points = []
    for quality in qualities:
        sizes: list[list[int]] = []
        decoded: list[np.ndarray] = []
        for group in groups:
            files = [runtime.compress(image, quality=quality) for image in group]
            decoded.append(np.stack([runtime.decompress(data) for data in files]))
            sizes.append([len(f) for f in files])
        points.append(_point(quality, sizes, groups, decoded))
    return points


def measure_classic(images: Images, fmt: str, qualities: Sequence[int] = CLASSIC_QUALITIES) -> list[RDPoint]:
    """JPEG, WebP or AVIF through Pillow at each quality; decoded back to the same channel count."""
    groups = same_shape_groups(images)
    points = []
    for quality in qualities:
        sizes: list[list[int]] = []
        decoded: list[np.ndarray] = []
        for group in groups:
            files = [imaging.encode_with(image, fmt, quality) for image in group]
            decoded.append(np.stack([imaging.decode_baseline(data, group.shape[3]) for data in files]))
            sizes.append([len(f) for f in files])
        points.append(_point(quality, sizes, groups, decoded))
    return points


def describe_sizes(images: Images) -> str:
    """``WxHxC`` for one size; the range and mean for photos at their own sizes."""
    groups = same_shape_groups(images)
    channels = groups[0].shape[3]
    if len(groups) == 1:
        height, width = groups[0].shape[1:3]
        return f"{width}x{height}x{channels}"
    shapes = np.array([group.shape[1:3] for group in groups for _ in range(len(group))])
    heights, widths = shapes[:, 0], shapes[:, 1]
    return (
        f"own sizes {widths.min()}-{widths.max()} x {heights.min()}-{heights.max()} "
        f"(mean {widths.mean():.0f}x{heights.mean():.0f}) x{channels}"
    )


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


def classic_codecs() -> tuple[tuple[str, ...], dict[str, str]]:
    """The classic codecs this Pillow can write, and why any other is left out."""
    if imaging.avif_available():
        return CLASSIC_CODECS, {}
    missing = {"avif": "this Pillow cannot write AVIF with the AOM encoder (built without libavif or AOM)"}
    return tuple(fmt for fmt in CLASSIC_CODECS if fmt not in missing), missing


def compare(
    runtime: ModelRuntime,
    images: Images,
    *,
    qualities: Sequence[int] = LATENTZ_QUALITIES,
    classic_qualities: Sequence[int] = CLASSIC_QUALITIES,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole comparison on one set of images: every codec's curve and BD-rates vs each classic.

    ``images`` as in `measure_latentz`: every codec codes exactly these pixels.
    """
    say = progress or (lambda _message: None)
    say(f"latentz {runtime.name}")
    curves = {"latentz": measure_latentz(runtime, images, qualities)}
    classics, unavailable = classic_codecs()
    for fmt in classics:
        say(fmt)
        curves[fmt] = measure_classic(images, fmt, classic_qualities)
    ours = curves["latentz"]
    summary: dict[str, Any] = {}
    for fmt in classics:
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
            "best_psnr_db": max(p.psnr for p in theirs),
        }
    groups = same_shape_groups(images)
    descriptions = {
        "latentz": f"latentz {runtime.name}: quantised posterior mean, range-coded; whole .latentz files",
        **CODEC_DESCRIPTIONS,
    }
    return {
        "model": runtime.name,
        "fingerprint": runtime.fingerprint,
        "n_images": sum(len(group) for group in groups),
        "image": describe_sizes(images),
        "codecs": {name: to_compressai(name, descriptions[name], points) for name, points in curves.items()},
        "bd_rate_vs": summary,
        "not_measured": unavailable,
        "best_latentz": max((p.psnr for p in ours), default=None),
        "note": (
            "rates are whole files, in mean bytes per image (bpp: the mean of each image's 8 * bytes / "
            "pixels); PSNR is the mean of per-image PSNRs (each capped at 60 dB) on the pixels every "
            "codec was given; BD-rate is latentz's rate change against each classic codec at equal PSNR "
            "over the PSNR range both reach (negative = latentz smaller)"
        ),
    }
