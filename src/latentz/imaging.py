"""Decode untrusted image bytes safely and convert between the array layouts latentz uses.

Torch-free: the data loader, the ONNX runtime and the web server all go through here, so every
image that enters latentz is decoded by one careful function (`open_image`) and resized by one
aspect-preserving function (`to_array`).

Layouts: images between modules are uint8 ``(N, H, W, C)``; images entering a network are
float32 ``(N, C, H, W)`` in ``[0, 1]``.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000
"""Largest width * height we agree to decode (a 40 MP photo); bigger is treated as a decompression bomb."""

ENCODABLE_FORMATS = ("jpeg", "webp", "avif", "png")
AVIF_SPEED = 4
"""libavif's speed for the AVIF baseline, from 0 (slowest, smallest files) to 10 (fastest): a middle
setting, the one the project's comparisons quote."""

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""The only Pillow plugins `open_image` lets parse untrusted bytes (judged by content): the CLI, the data
loader and the server accept the same images, and ICO, PCX, TGA or EPS (which Pillow hands to Ghostscript)
are refused whatever the file is called."""
ACCEPTED_FORMATS_TEXT = "JPEG, PNG, WebP, GIF, BMP or TIFF"


class ImageError(ValueError):
    """An image could not be used: unreadable, truncated, too large, or the wrong shape."""


def open_image(source: str | Path | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image from a path or raw bytes, refusing anything suspicious.

    The format is sniffed from the content, never from the file name, and must be one of
    `ACCEPTED_FORMATS`. The pixel count is checked from the header *before* decoding, so a tiny
    file claiming to be 100k x 100k pixels costs nothing. EXIF orientation is applied so phone
    photos come out upright.
    """
    name = "<bytes>" if isinstance(source, bytes | bytearray | memoryview) else str(source)
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            handle: io.BytesIO | str | Path = io.BytesIO(bytes(source))
        else:
            handle = Path(source)
            if not handle.is_file():
                raise ImageError(f"{name}: no such file")
        with warnings.catch_warnings():
            # PIL warns (rather than raises) between 1x and 2x its own limit; we enforce ours instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle, formats=ACCEPTED_FORMATS)
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageError(f"{name}: image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ImageError(
                    f"{name}: image is {width}x{height} = {width * height:,} pixels, more than the "
                    f"{max_pixels:,} allowed (refused before decoding)"
                )
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # in place keeps .format for callers
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(f"{name}: refused before decoding as a decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{name}: not a recognised image format (latentz reads {ACCEPTED_FORMATS_TEXT}, judged by "
            "the content, not the name)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"{name}: corrupt or truncated image ({error})") from None
    return image


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def has_transparent_pixels(image: Image.Image) -> bool:
    """Whether any pixel is less than opaque: those `to_array` composites onto white, which a user
    should be told (a logo on a transparent background comes back on white)."""
    if not _has_alpha(image):
        return False
    with_alpha = image if image.mode in ("RGBA", "LA", "PA") else image.convert("RGBA")
    return with_alpha.getchannel("A").getextrema()[0] < 255


def _flatten(image: Image.Image, mode: str) -> Image.Image:
    """Convert to 'L' or 'RGB', compositing any transparency onto white (how viewers show it)."""
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode.startswith("I;16"):  # numpy reads every byte order (point() does not: I;16B)
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8), "L")
    elif image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    try:
        return image.convert(mode)
    except ValueError:  # e.g. LAB to greyscale: Pillow has no such conversion
        wanted = "greyscale" if mode == "L" else "RGB"
        raise ImageError(
            f"cannot use an image in the {image.mode} colour mode: it does not convert to {wanted}; "
            "save it as an RGB or greyscale image first"
        ) from None


def to_array(image: Image.Image, size: int | None, channels: int) -> np.ndarray:
    """Turn a decoded image into uint8 ``(H, W, C)``, optionally ``size`` x ``size``.

    Resizing keeps the aspect ratio: the short side becomes ``size`` and the long side is
    centre-cropped, so objects are never squashed. Shrinking uses Lanczos with a box pre-reduction
    (``reducing_gap``), which is both fast on big photos and free of aliasing.
    """
    if channels not in (1, 3):
        raise ImageError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    image = _flatten(image, "L" if channels == 1 else "RGB")
    if size is not None:
        if size <= 0:
            raise ImageError(f"image size must be positive, got {size}")
        width, height = image.size
        scale = size / min(width, height)
        new_width = max(size, round(width * scale))
        new_height = max(size, round(height * scale))
        if (new_width, new_height) != (width, height):
            image = image.resize(
                (new_width, new_height), Image.Resampling.LANCZOS, reducing_gap=3.0 if scale < 1 else None
            )
        left = (new_width - size) // 2
        top = (new_height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array)


def load_array(source: str | Path | bytes, size: int | None, channels: int) -> np.ndarray:
    """`open_image` then `to_array`: untrusted bytes or a path in, uint8 ``(H, W, C)`` out."""
    return to_array(open_image(source), size, channels)


def to_float_nhwc(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` or ``(H, W, C)`` -> float32 ``(N, H, W, C)`` in ``[0, 1]``, level / 255.

    The one place 8-bit levels become a network's floats; `to_float_nchw` and training's batches
    (a channels-last view of this, `latentz.models.to_network`) both come from it.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ImageError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ImageError(f"expected (N, H, W, C) or (H, W, C) images, got shape {images.shape}")
    scaled = images.astype(np.float32)
    scaled /= np.float32(255.0)
    return scaled


def to_float_nchw(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` or ``(H, W, C)`` -> float32 ``(N, C, H, W)`` in ``[0, 1]`` for a network.

    A fresh C-order copy with plain strides even for one channel (where numpy would call the
    transposed view contiguous already): torch reads such a view as channels-last and convolves
    it by another algorithm, which changes the last bits.
    """
    return to_float_nhwc(images).transpose(0, 3, 1, 2).copy()


def to_uint8_nhwc(images: np.ndarray) -> np.ndarray:
    """float ``(N, C, H, W)`` in ``[0, 1]`` -> uint8 ``(N, H, W, C)``, rounded and clipped.

    NaN becomes 0 rather than an arbitrary byte, so a broken decoder shows as black, not noise.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ImageError(f"expected (N, C, H, W) images, got shape {images.shape}")
    scaled = np.nan_to_num(images * 255.0, nan=0.0, posinf=255.0, neginf=0.0)
    return np.ascontiguousarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))


def to_pil(image: np.ndarray) -> Image.Image:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ImageError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ImageError(f"expected an (H, W, C) image with C in (1, 3), got shape {image.shape}")
    if image.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(image[:, :, 0]), "L")
    return Image.fromarray(np.ascontiguousarray(image), "RGB")


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 ``(H, W, C)`` image, C in {1, 3}: grey stays single-channel."""
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def avif_available() -> bool:
    """Whether this Pillow can write AVIF with libaom, the encoder the baseline names (Pillow needs
    to be built with libavif; recent wheels are, with AOM)."""
    from PIL import features

    if not features.check("avif"):
        return False
    try:
        from PIL import _avif  # Pillow's libavif binding: the only way to ask which encoders it has

        return bool(_avif.encoder_codec_available("aom"))
    except (ImportError, AttributeError):
        return False


def encode_with(image: np.ndarray, fmt: str, quality: int) -> bytes:
    """Encode a uint8 ``(H, W, C)`` image as JPEG, WebP or AVIF (or PNG) with Pillow, the classical
    baselines.

    JPEG uses 4:2:0 chroma subsampling (the common default, so baselines are realistic) and
    optimised Huffman tables so it is not handicapped by a few wasted bytes. WebP uses method 6
    (its slowest, smallest files). AVIF uses libavif's AOM encoder at speed `AVIF_SPEED`, 4:2:0
    chroma (4:0:0 for grey), full range and one thread, so its files do not depend on how many
    cores the machine has.
    """
    fmt = fmt.lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in ENCODABLE_FORMATS:
        raise ImageError(f"unknown format {fmt!r}; use one of {', '.join(ENCODABLE_FORMATS)}")
    if fmt != "png" and not 0 <= quality <= 100:
        raise ImageError(f"quality must be between 0 and 100, got {quality}")
    if fmt == "avif" and not avif_available():
        raise ImageError(
            "this Pillow cannot write AVIF with the AOM encoder (it was built without libavif, or "
            "without AOM); install a Pillow whose PIL.features.check('avif') is True, such as a recent "
            "wheel from PyPI"
        )
    pil = to_pil(image)
    buffer = io.BytesIO()
    if fmt == "jpeg":
        pil.save(buffer, format="JPEG", quality=quality, optimize=True, subsampling=2)
    elif fmt == "webp":
        pil.save(buffer, format="WEBP", quality=quality, method=6)
    elif fmt == "avif":
        subsampling = "4:0:0" if pil.mode == "L" else "4:2:0"
        pil.save(
            buffer,
            format="AVIF",
            quality=quality,
            speed=AVIF_SPEED,
            subsampling=subsampling,
            range="full",
            max_threads=1,
            codec="aom",
        )
    else:
        pil.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_baseline(data: bytes, channels: int) -> np.ndarray:
    """Decode bytes that `encode_with` made (JPEG, WebP, AVIF or PNG) to uint8 ``(H, W, C)``.

    Only for the baselines latentz encodes itself: AVIF is not among the formats `open_image`
    accepts from users, so measuring against it needs this one trusted door.
    """
    with Image.open(io.BytesIO(data), formats=("JPEG", "WEBP", "AVIF", "PNG")) as image:
        image.load()
        return to_array(image, None, channels)


def webp_within(image: np.ndarray, budget: int) -> tuple[int, bytes, bool]:
    """The highest-quality WebP of ``image`` no bigger than ``budget`` bytes: ``(quality, data,
    fits)``. WebP's size grows with quality, so a binary search; when not even quality 0 fits,
    quality 0 with ``fits`` False (the comparison "at the same byte budget" then favours WebP)."""
    low, high = 0, 100
    best: tuple[int, bytes] | None = None
    while low <= high:
        quality = (low + high) // 2
        data = encode_with(image, "webp", quality)
        if len(data) <= budget:
            best = (quality, data)
            low = quality + 1
        else:
            high = quality - 1
    if best is None:
        return 0, encode_with(image, "webp", 0), False
    return *best, True


def grid(images: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """Tile uint8 ``(N, H, W, C)`` images into one ``(H', W', C)`` picture, row by row, on white."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ImageError(f"expected (N, H, W, C) images, got shape {images.shape}")
    count, height, width, channels = images.shape
    if count == 0:
        raise ImageError("cannot make a grid of zero images")
    if columns <= 0 or pad < 0:
        raise ImageError(f"columns must be positive and pad non-negative, got {columns}, {pad}")
    columns = min(columns, count)
    rows = -(-count // columns)
    canvas = np.full(
        (rows * height + (rows + 1) * pad, columns * width + (columns + 1) * pad, channels),
        255,
        dtype=np.uint8,
    )
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top = pad + row * (height + pad)
        left = pad + column * (width + pad)
        canvas[top : top + height, left : left + width] = image
    return canvas
