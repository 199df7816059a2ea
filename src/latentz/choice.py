"""Which installed model fits an image, and at which quality to start: one rule for every front end.

Torch-free, and free of ONNX Runtime: it reads only the bundles' config and card, so the CLI, the
server and the codec page can all ask it (the image side, `image_channels`, needs numpy and Pillow).

The model rule (`choose_model`), for models that can encode (ONNX exported, with an entropy model):

1. A *small grey* image, grey in content and at most `SMALL_FACTOR` times a grey fixed-size model's
   side (112 px for the 28x28 digit models), goes to the digit codec: a grey fixed-size model.
2. Anything else (a colour photo, or a grey image too big for the digit models, which would shrink
   it to 28x28) goes to the photo codec: a fully convolutional model, grey ones first for a grey
   image, else the RGB ones.
   A photo (colour, or a grey image too big for the digit models) whose shorter side is above
   `RD_MIN_SIDE` (64 px) goes to the rate-distortion photo codec (format v2, `is_rate_distortion`)
   when one is installed: it is trained on photos at their own size (on 20 held-out cars made
   grey, red-cars-hp gives 29.0 dB at 1,790 bytes where red-cars-128 stops at 28.2 dB for 6,275;
   a flat grey image becomes its planar version-3 file); thumbnails keep the size rule
   (red-cars-64 codes them better).
3. Among several others, the size rule: the smallest training size at or above the image's shorter side
   (a model trained at 128 px for a 102 px-high car, at 64 px for a 60 px one), else the largest;
   then the best held-out PSNR on the model's card (mnist-z32's 24.9 dB over mnist-z10's 20.2 and
   fashion-z10's 20.5: the README's digit codec), then the name.
4. With nothing of that kind installed, the nearest installed model by the same order, said so.

A model named explicitly gets `fit_warning` when it does not fit: a colour photo to a grey model, a
small grey image to a photo model while a digit codec is installed, an image far beyond the model's
scale (`PHOTO_SCALE_FACTOR` times a photo model's training size, `SMALL_FACTOR` times a fixed-size
model's side).

The quality rule (`recommended_quality`) is documented per kind of model, from `latentz rd` on each
shipped bundle's held-out images (docs/rd/*/summary.json): the lowest quality on rd's grid of tens
whose mean PSNR is within `KNEE_WITHIN_DB` of the model's best. Past it, more bytes buy little.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentz.bundle import (
    HYPERPRIOR_FILE,
    BundleError,
    BundleInfo,
    coding_files,
    list_bundles,
    read_bundle,
)
from latentz.config import ModelConfig

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from PIL import Image

SMALL_FACTOR = 4
"""A grey image is 'small' (digit-like) up to this many times a fixed-size grey model's side; past it
a fixed-size model would keep less than 1/16 of its pixels, so the photo codec keeps it whole."""
PHOTO_SCALE_FACTOR = 2
"""A photo model meets images up to this many times its training size without a warning. Measured:
red-cars-64 on the held-out cars at 128x128 loses its whole lead over WebP (BD-rate -35.2% at 64x64,
+1.1% at 128x128, README), so at twice its scale a user should hear about it."""
RD_MIN_SIDE = 64
"""Photos whose shorter side is above this go to the rate-distortion codec when one is installed.
Measured on the 132 held-out cars: at 64x64 red-cars-hp's BD-rate against WebP is -26.3% where
red-cars-64's is -35.2%, so thumbnails keep the VAE codec; at their own size red-cars-hp leads."""
KNEE_WITHIN_DB = 2.0
"""The recommended quality is the lowest whose held-out PSNR is within this much of the model's best."""
GREY_SPREAD = 8
"""An RGB image counts as grey when 99% of its pixels have channels this close (JPEG chroma noise)."""
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")

# The recommended quality per kind of model, with what it was measured on (`recommended_quality`).
PHOTO_QUALITY = 50
"""Spatial (photo) models. Within 2 dB of the best: red-cars-64 at 50 (24.9 of 26.8 dB, 299 bytes where
WebP needs 467 at equal PSNR), red-cars-128 at 50 (26.3 of 28.3 dB, 916 bytes); at 40 both are over
4 dB short, and from 50 to 60 each gains 1.3 dB for 44-49% more bytes. The middle of the README's
"use 40 to 60"."""
LEARNED_SCALE_QUALITY = 30
"""Fixed-size models with learned Gaussian pixels. mnist-z32 at 30: 28.2 bytes at 23.6 of 24.9 dB,
29% of WebP's smallest digit (97 bytes, 22.7 dB); at 20 it is 3.0 dB short. Their posteriors are
narrow (mnist-z32: std 0.05 against a spread of 1.3) and quality counts steps in posterior stds, so
30 (12.25 stds, 0.6 in the latent) is about as coarse as mnist-z10's 50 (4 stds of 0.16, 0.66)."""
VECTOR_QUALITY = 50
"""Other fixed-size models (Bernoulli pixels, measured; fixed-scale Gaussian or Laplace, not measured).
mnist-z10 at 50: 19.0 of 20.2 dB in 19 bytes; fashion-z10 at 50: 19.0 of 20.5 dB; at 40 both are
about 3 dB short."""


class NoModelError(BundleError):
    """No installed model can encode at all."""

    def __init__(self) -> None:
        super().__init__(
            "no installed model can encode (none has encoder.onnx and entropy_model.json): install one, "
            "or export one with `latentz export MODEL`, or pass -m MODEL"
        )


@dataclass(frozen=True)
class Recommendation:
    """A model's recommended quality and why, in words for the user."""

    quality: int
    reason: str


@dataclass(frozen=True)
class Choice:
    """The model picked for an image: the bundle, why (``reason``, starting 'a colour photo ...'),
    the kind of image it was picked for (``kind``, the same for every image the rule treats alike)
    and a warning when even this best installed model does not fit the image."""

    info: BundleInfo
    reason: str
    kind: str
    warning: str | None = None

    @property
    def name(self) -> str:
        return self.info.name


# -- quality --------------------------------------------------------------------------------------
def recommended_quality(config: ModelConfig) -> Recommendation:
    """The quality a model starts at when none is given, by the documented rule for its kind."""
    if config.fully_convolutional:
        return Recommendation(
            PHOTO_QUALITY,
            "the recommended quality for photo models (the lowest within 2 dB of their best on held-out "
            "photos, measured on red-cars-64 and red-cars-128)",
        )
    if config.likelihood == "gaussian-learned":
        return Recommendation(
            LEARNED_SCALE_QUALITY,
            "the recommended quality for digit codecs with learned pixel noise (the lowest within 2 dB of "
            "their best on held-out digits, measured on mnist-z32)",
        )
    return Recommendation(
        VECTOR_QUALITY,
        "the recommended quality for fixed-size models (the lowest within 2 dB of their best on "
        "held-out images, measured on mnist-z10 and fashion-z10)",
    )


def knee_quality(qualities: Sequence[int], psnrs: Sequence[float], within_db: float = KNEE_WITHIN_DB) -> int:
    """The lowest measured quality whose PSNR is within ``within_db`` of the best (the rule's definition,
    computed from a `latentz rd` curve: docs/rd/MODEL/summary.json)."""
    if not qualities or len(qualities) != len(psnrs):
        raise ValueError("need one PSNR per quality, at least one")
    best = max(psnrs)
    return min(q for q, psnr in zip(qualities, psnrs, strict=True) if psnr >= best - within_db)


# -- images ---------------------------------------------------------------------------------------
def image_channels(image: Image.Image) -> int:
    """1 when an image is grey in content (a grey mode, or RGB whose channels agree), else 3.

    Judged on the image as the models see it (transparency on white), on at most about 256x256
    samples, so a big photo costs a few milliseconds.
    """
    if image.mode in GREY_MODES:
        return 1
    import numpy as np
    from PIL import Image as PILImage

    from latentz import imaging

    width, height = image.size
    stride = max(1, math.ceil(max(width, height) / 256))
    if stride > 1 and image.mode in ("RGB", "RGBA"):  # every stride-th pixel: 0.1 ms for 2000x1500
        size = (max(1, width // stride), max(1, height // stride))
        image = image.resize(size, PILImage.Resampling.NEAREST)
    array = imaging.to_array(image, None, 3)  # as the models see it: transparency on white
    channel_spread = array.max(axis=2).astype(np.int16) - array.min(axis=2)
    return 1 if float(np.percentile(channel_spread, 99)) <= GREY_SPREAD else 3


def describe(width: int, height: int, channels: int) -> str:
    """'colour 207x102' or 'grey 28x28'."""
    return f"{'grey' if channels == 1 else 'colour'} {width}x{height}"


# -- models ---------------------------------------------------------------------------------------
def can_encode(info: BundleInfo) -> bool:
    return all(info.file(name).is_file() for name in coding_files(info.path))


def encoding_models(bundles: Iterable[str | Path | BundleInfo] | None = None) -> list[BundleInfo]:
    """The installed bundles (or the given ones) that can encode, unreadable ones left out."""
    infos = []
    for item in list_bundles() if bundles is None else bundles:
        try:
            info = item if isinstance(item, BundleInfo) else read_bundle(item)
        except (OSError, ValueError):
            continue
        if can_encode(info):
            infos.append(info)
    return infos


def _held_out_psnr(info: BundleInfo) -> float:
    metrics: Any = info.card.get("metrics")
    value = metrics.get("psnr") if isinstance(metrics, dict) else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else -math.inf


def _by_size(models: list[BundleInfo], side: int) -> BundleInfo:
    """The size rule: the smallest training size at or above ``side``, else the largest; then the
    best held-out PSNR on the card, then the name."""
    sizes = sorted({m.config.image_size for m in models})
    size = next((s for s in sizes if s >= side), sizes[-1])
    same = [m for m in models if m.config.image_size == size]
    return min(same, key=lambda m: (-_held_out_psnr(m), m.name))


def is_rate_distortion(info: BundleInfo) -> bool:
    """A format-v2 photo codec (trained for rate-distortion on photos at their own size)."""
    return info.file(HYPERPRIOR_FILE).is_file()


def _is_small(width: int, height: int, side: int) -> bool:
    return max(width, height) <= SMALL_FACTOR * side


def _pick(width: int, height: int, channels: int, models: list[BundleInfo]) -> tuple[BundleInfo, str, str]:
    """The rule of the module docstring, without warnings: the model, why, and the kind of image."""
    shorter = min(width, height)
    digit_models = [m for m in models if not m.config.fully_convolutional and m.config.channels == 1]
    if channels == 1 and digit_models:
        chosen = _by_size(digit_models, shorter)
        size = chosen.config.image_size
        if _is_small(width, height, size):
            reason = (
                f"a small grey image ({width}x{height}): the digit codec, the grey {size}x{size} model "
                f"with the best held-out PSNR on its card ({_held_out_psnr(chosen):.1f} dB)"
            )
            return chosen, reason, "small grey images: the digit codec"
    photo_models = [m for m in models if m.config.fully_convolutional]
    if photo_models:
        pool = (
            [m for m in photo_models if m.config.channels == channels]
            or [m for m in photo_models if m.config.channels == 3]
            or photo_models
        )
        rate_distortion = [m for m in pool if is_rate_distortion(m)]
        image = "a colour photo" if channels == 3 else "a grey image too big for a digit model"
        if rate_distortion and shorter > RD_MIN_SIDE:
            chosen = min(rate_distortion, key=lambda m: (-_held_out_psnr(m), m.name))
            reason = (
                f"{image} ({width}x{height}): the rate-distortion photo codec (format v2), trained on "
                f"photos at their own size"
            )
            kind = "colour photos" if channels == 3 else "grey images too big for a digit model"
            return chosen, reason, f"{kind}: the rate-distortion photo codec"
        chosen = _by_size([m for m in pool if not is_rate_distortion(m)] or pool, shorter)
        size = chosen.config.image_size
        which = (
            "the smallest photo-model size at or above its shorter side"
            if shorter <= size
            else "the largest photo-model size installed"
        )
        reason = (
            f"{image} ({width}x{height}): the photo codec trained at {size}x{size}, {which} ({shorter} px)"
        )
        kind = "colour photos" if channels == 3 else "grey images too big for a digit model"
        return chosen, reason, f"{kind}: the photo codec trained at {size}x{size}"
    chosen = _by_size([m for m in models if m.config.channels == channels] or models, shorter)
    image = describe(width, height, channels)
    return chosen, f"a {image} image, for which no installed model is made: the nearest", "the nearest model"


def choose_model(
    width: int, height: int, channels: int, bundles: Iterable[str | Path | BundleInfo] | None = None
) -> Choice:
    """The installed model (or one of ``bundles``) that fits an image of this size and content
    (``channels`` 1 for grey, 3 for colour, see `image_channels`), why, and a warning when even it
    does not fit."""
    models = encoding_models(bundles)
    if not models:
        raise NoModelError()
    chosen, reason, kind = _pick(width, height, channels, models)
    return Choice(chosen, reason, kind, fit_warning(chosen, width, height, channels, models))


def fit_warning(
    info: BundleInfo,
    width: int,
    height: int,
    channels: int,
    bundles: Iterable[str | Path | BundleInfo] | None = None,
    how_to_switch: str | None = "leave out -m to use it",
) -> str | None:
    """One sentence when ``info`` does not fit an image of this size and content, naming the
    installed model that does (None when it fits). ``how_to_switch`` ends it in brackets: the CLI's
    way to get the better model (None for front ends that say it their own way, the codec page)."""
    models = encoding_models(bundles)
    better = _pick(width, height, channels, models)[0] if models else None
    config = info.config
    image = describe(width, height, channels)
    size = config.image_size
    shorter = min(width, height)
    if channels == 3 and config.channels == 1:
        problem = f"{info.name} is a grey {size}x{size} model: this {image} photo loses its colour"
        if not config.fully_convolutional:
            problem += f" and comes back {size}x{size}"
    elif config.fully_convolutional and shorter > PHOTO_SCALE_FACTOR * size and not is_rate_distortion(info):
        problem = (
            f"{info.name} was trained on {size}x{size} photos and this {image} image is "
            f"{shorter / size:.1f} times that scale: a photo model codes best near the scale it learnt"
        )
    elif not config.fully_convolutional and not _is_small(width, height, size):
        problem = (
            f"{info.name} codes every image at {size}x{size}: this {image} image comes back {size}x{size}"
        )
    elif config.fully_convolutional and better is not None and not better.config.fully_convolutional:
        problem = (
            f"{info.name} is a photo model: this small {image} image takes far fewer bytes with the "
            "digit codec"
        )
    else:
        return None
    if better is None or better.path == info.path:
        return f"{problem} (no installed model fits it better)."
    return f"{problem}; {better.name} fits it better" + (f" ({how_to_switch})." if how_to_switch else ".")
