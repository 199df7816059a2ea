"""Uploads, judged by their bytes, never by their file name or declared content type: sniff, check, parse.

A PNG called ``photo.latentz`` is still a PNG and is refused by the decoder with 415. Every check
here runs before a request may wait for an inference slot, so wrong or oversized uploads never queue.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

from fastapi import UploadFile
from PIL import Image

from latentz import codec, imaging
from latentz.codec.format import MAGIC as LATENTZ_MAGIC
from latentz.server.errors import ApiError
from latentz.server.limits import Limits

IMAGE_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    # (format, magic bytes, offset of the magic)
    ("JPEG", b"\xff\xd8\xff", 0),
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("GIF", b"GIF87a", 0),
    ("GIF", b"GIF89a", 0),
    ("WEBP", b"WEBP", 8),
    ("BMP", b"BM", 0),
    ("TIFF", b"II*\x00", 0),
    ("TIFF", b"MM\x00*", 0),
)


OTHER_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    # what people upload by mistake, named in the 415 (format, magic bytes, offset of the magic)
    ("a PDF document", b"%PDF", 0),
    ("a ZIP archive", b"PK\x03\x04", 0),
    ("a gzip file", b"\x1f\x8b", 0),
    ("an ICO icon", b"\x00\x00\x01\x00", 0),
    ("a HEIF/HEIC or AVIF image", b"ftyp", 4),
    ("a JPEG XL image", b"\xff\x0a", 0),
)


def describe_content(data: bytes) -> str:
    """What the first bytes of a file look like, in words (for people, never a Python bytes repr)."""
    for name, magic, offset in OTHER_SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return f"it looks like {name}"
    head = data[:16]
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    printable = all(32 <= byte < 127 or byte in b"\t\r\n" for byte in text)
    if text[:1] in (b"<", b"{", b"[") or (text and printable):
        kind = {b"<": "HTML, XML or SVG", b"{": "JSON", b"[": "JSON"}.get(text[:1], "text")
        preview = "".join(chr(byte) if 32 <= byte < 127 else " " for byte in text[:12]).strip()
        return f'it looks like {kind} and starts with "{preview}"'
    return "its first bytes are " + " ".join(f"{byte:02x}" for byte in data[:8]) + " (hex)"


def sniff_image(data: bytes) -> str:
    """The image format the bytes actually hold, or a 415 that says what they look like instead."""
    if not data:
        raise ApiError(400, "the uploaded file is empty")
    for name, magic, offset in IMAGE_SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (name != "WEBP" or data[:4] == b"RIFF"):
            return name
    if data[: len(LATENTZ_MAGIC)] == LATENTZ_MAGIC:
        raise ApiError(
            415, "this is a .latentz file, not an image: decode it instead of encoding it", detected="latentz"
        )
    raise ApiError(
        415,
        f"not a supported image: the content is not {imaging.ACCEPTED_FORMATS_TEXT} (judged by the bytes, "
        f"not the file name; {describe_content(data)})",
    )


def check_upload_image(data: bytes, max_pixels: int) -> str:
    """Sniff the format and read the size from the header (cheap: no pixels are decoded).

    415, 413 or 400 on failure; the format name otherwise. Run before a request waits for an
    inference slot, so wrong or oversized uploads never queue.
    """
    sniffed = sniff_image(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header_only:  # reads the header, not the pixels
                width, height = header_only.size
    except Image.DecompressionBombError as error:
        message = f"image refused before decoding as a decompression bomb ({error})"
        raise ApiError(413, message, limit=max_pixels) from None
    except Exception as error:  # Pillow raises many types for broken headers
        raise ApiError(400, f"corrupt {sniffed} image: its header cannot be read ({error})") from None
    if width * height > max_pixels:
        raise ApiError(
            413,
            f"image is {width}x{height} = {width * height:,} pixels, more than the {max_pixels:,} allowed "
            "(refused before decoding)",
            width=width,
            height=height,
            limit=max_pixels,
        )
    return sniffed


def open_upload_image(data: bytes, max_pixels: int) -> Image.Image:
    """Check the upload (`check_upload_image`), then decode it: 415, 413 or 400 on failure."""
    sniffed = check_upload_image(data, max_pixels)
    try:
        return imaging.open_image(data, max_pixels=max_pixels)
    except imaging.ImageError as error:
        raise ApiError(400, f"corrupt {sniffed} image: {error}".replace("<bytes>: ", "")) from None


def parse_latentz(data: bytes) -> tuple[codec.Header, bytes]:
    """Check a .latentz upload's container (magic, version, checksum): its header and payload, so
    the decode that follows does not unpack the file again."""
    if not data:
        raise ApiError(400, "the uploaded file is empty")
    try:
        header, payload = codec.unpack(data)
    except codec.UnsupportedVersionError as error:
        raise ApiError(415, str(error), detected="latentz") from None
    except codec.BadMagicError:
        image = _image_format(data)
        if image is not None:
            message = f"this is a {image} image, not a .latentz file: encode it instead of decoding it"
            raise ApiError(415, message, detected="image") from None
        message = f"not a .latentz file: it does not start with the letters LZ ({describe_content(data)})"
        raise ApiError(415, message, detected="unknown") from None
    except codec.LatentzFormatError as error:
        raise ApiError(400, str(error)) from None
    return header, payload


def _image_format(data: bytes) -> str | None:
    """The supported image format the bytes hold, if any."""
    try:
        return sniff_image(data)
    except ApiError:
        return None


async def read_upload(upload: UploadFile, limits: Limits) -> bytes:
    """The upload's bytes, or a 413 once it is over the per-file limit (never more is read)."""
    data = await upload.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise ApiError(
            413,
            f"upload too large: more than {limits.max_upload_bytes:,} bytes (the limit per file)",
            limit=limits.max_upload_bytes,
        )
    return data


async def read_image_upload(upload: UploadFile, limits: Limits) -> bytes:
    """The upload's bytes, sniffed and size-checked from the header before it may queue."""
    data = await read_upload(upload, limits)
    check_upload_image(data, limits.max_pixels)
    return data


def download_name(filename: str | None, suffix: str) -> str:
    """A safe file name for Content-Disposition, from the upload's name (used for nothing else)."""
    stem = Path(filename or "").stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    return f"{stem[:80]}{suffix}"
