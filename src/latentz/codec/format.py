"""The ``.latentz`` container: a compact versioned header, the range-coded payload, a CRC.

Layout (versions 1, 2 and 3; docs/latentz-format.md is the full specification)::

    offset  size  field
    0       2     magic "LZ"
    2       1     format version (1)
    3       4     model fingerprint: first 4 bytes of SHA-256(weights.safetensors)
    7       1     entropy model id: first byte of the entropy model's table digest
    8       var   image height, image width (unsigned LEB128 each)
    .       1     channels << 4 | latent rank        (channels 1 or 3; rank 1 vector, 3 spatial)
    .       var   latent dimensions (LEB128 each)
    .       var   v1: quantisation step in fine units (LEB128, >= 1; 4 fine units = 1 posterior std)
    .       1     v2, v3: quality 0..100 (the rate-distortion codec's gain offsets follow from it)
    .       n     payload: range-coded symbols
    end-2   2     CRC-16/CCITT (big-endian) of every byte before it

A 28x28 digit with a 10-d latent spends 15 bytes on all of that, and the payload follows.
Parsing never trusts a length: every field is bounds-checked and the CRC is verified before any
field after the magic (the version included) is interpreted. The caps here are the format's own
ceiling; how big an image a given model decodes is `latentz.codec.limits`' decision, made from the
header before anything is allocated.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

MAGIC = b"LZ"
VERSION = 1
VERSION_HYPERPRIOR = 2
"""Version 2: the rate-distortion (hyperprior) codec; its payload holds the hyper-latent, then y."""
VERSION_PLANAR = 3
"""Version 3: the rate-distortion codec's planar payload (`latentz.codec.planar`): version 2's
header, a payload of planar-prediction residuals of the quantised latent (flat images)."""
RATE_DISTORTION_VERSIONS = (VERSION_HYPERPRIOR, VERSION_PLANAR)
"""The versions whose header carries a quality: files of a rate-distortion bundle."""
VERSIONS = (VERSION, VERSION_HYPERPRIOR, VERSION_PLANAR)
FINGERPRINT_BYTES = 4
CHECKSUM_BYTES = 2
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_SIDE = 65_535
MAX_PIXELS = 1 << 26
"""The format's ceiling on height * width (67 MP); `latentz.codec.limits` sets the working limit."""
MAX_LATENT_VALUES = 1 << 24
MAX_STEP = 4096
"""Largest step in fine units (1,024 posterior stds); anything coarser codes every latent as 0."""
LATENT_RANKS = (1, 3)
# magic, version, fingerprint, entropy id, then one byte each for height, width, channels/rank,
# one latent dimension and the step: the smallest possible header.
_MIN_BYTES = len(MAGIC) + 1 + FINGERPRINT_BYTES + 1 + 5 + CHECKSUM_BYTES


class LatentzFormatError(ValueError):
    """A byte string that is not a usable .latentz file; the message says exactly why."""


class CodecSettingError(ValueError):
    """A codec setting out of its range (a quality, a step, a size limit): the user's to change."""


class BadMagicError(LatentzFormatError):
    pass


class UnsupportedVersionError(LatentzFormatError):
    pass


class ChecksumError(LatentzFormatError):
    pass


class TruncatedFileError(LatentzFormatError):
    pass


class ModelMismatchError(LatentzFormatError):
    """The file was made by another model (fingerprint, entropy model or shape differ)."""


@dataclass(frozen=True)
class Header:
    """Everything a .latentz file says about itself, apart from the payload."""

    fingerprint: bytes
    entropy_id: int
    height: int
    width: int
    channels: int
    latent_shape: tuple[int, ...]
    step: int = 1
    version: int = VERSION
    quality: int = 0  # versions 2 and 3 only

    def __post_init__(self) -> None:
        _check_header(self)

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()


def _check_header(header: Header) -> None:
    if len(header.fingerprint) != FINGERPRINT_BYTES:
        raise LatentzFormatError(f"fingerprint must be {FINGERPRINT_BYTES} bytes")
    if not 0 <= header.entropy_id <= 255:
        raise LatentzFormatError(f"entropy model id {header.entropy_id} does not fit in a byte")
    if not (1 <= header.height <= MAX_SIDE and 1 <= header.width <= MAX_SIDE):
        raise LatentzFormatError(f"image size {header.height}x{header.width} is outside 1..{MAX_SIDE}")
    if header.height * header.width > MAX_PIXELS:
        raise LatentzFormatError(
            f"image size {header.height}x{header.width} exceeds the {MAX_PIXELS:,}-pixel limit"
        )
    if header.channels not in (1, 3):
        raise LatentzFormatError(f"image channels must be 1 or 3, got {header.channels}")
    if len(header.latent_shape) not in LATENT_RANKS or min(header.latent_shape) < 1:
        raise LatentzFormatError(f"latent shape {header.latent_shape} is not (C,) or (C, H, W)")
    values = 1
    for dim in header.latent_shape:
        values *= dim
    if values > MAX_LATENT_VALUES:
        raise LatentzFormatError(
            f"latent shape {header.latent_shape} has more than {MAX_LATENT_VALUES:,} values"
        )
    if header.version not in VERSIONS:
        raise LatentzFormatError(f"format version {header.version} is not one of {VERSIONS}")
    v2_ok = len(header.latent_shape) == 3 and 0 <= header.quality <= 100
    if header.version in RATE_DISTORTION_VERSIONS and not v2_ok:
        raise LatentzFormatError(
            f"a version {header.version} file has a spatial latent and a quality 0..100, got {header.quality}"
        )
    if not 1 <= header.step <= MAX_STEP:
        raise LatentzFormatError(f"quantisation step {header.step} is outside 1..{MAX_STEP}")


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Reader:
    """Bounds-checked reading of the header fields (before the checksum)."""

    def __init__(self, data: bytes, end: int) -> None:
        self.data, self.pos, self.end = data, 0, end

    def take(self, count: int, what: str) -> bytes:
        if self.pos + count > self.end:
            raise TruncatedFileError(f"truncated .latentz file: it ends inside the {what}")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def varint(self, what: str) -> int:
        value = 0
        for shift in range(0, 35, 7):
            byte = self.take(1, what)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if shift and not byte:
                    raise LatentzFormatError(f"corrupt .latentz header: overlong encoding of the {what}")
                return value
        raise LatentzFormatError(f"corrupt .latentz header: the {what} is longer than 5 bytes")


def pack(header: Header, payload: bytes) -> bytes:
    """Serialise a header and payload into the bytes of a .latentz file."""
    head = bytearray(MAGIC)
    head.append(header.version)
    head += header.fingerprint
    head.append(header.entropy_id)
    head += _leb128(header.height) + _leb128(header.width)
    head.append(header.channels << 4 | len(header.latent_shape))
    for dim in header.latent_shape:
        head += _leb128(dim)
    if header.version in RATE_DISTORTION_VERSIONS:
        head.append(header.quality)
    else:
        head += _leb128(header.step)
    body = bytes(head) + payload
    return body + binascii.crc_hqx(body, 0).to_bytes(CHECKSUM_BYTES, "big")


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Parse and verify a .latentz file; raises a `LatentzFormatError` subclass on any problem."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise LatentzFormatError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_FILE_BYTES:
        raise LatentzFormatError(f"file is {len(data):,} bytes, more than the {MAX_FILE_BYTES:,} allowed")
    if data[: len(MAGIC)] != MAGIC[: len(data)] or not data:
        raise BadMagicError(
            "not a .latentz file: it does not start with the magic bytes 'LZ'"
            + (f" (starts with {data[:4]!r})" if data else " (it is empty)")
        )
    if len(data) < _MIN_BYTES:
        raise TruncatedFileError(
            f"truncated .latentz file: {len(data)} bytes, shorter than the smallest header ({_MIN_BYTES})"
        )
    body, stored = data[:-CHECKSUM_BYTES], int.from_bytes(data[-CHECKSUM_BYTES:], "big")
    computed = binascii.crc_hqx(body, 0)
    if stored != computed:
        raise ChecksumError(
            f"checksum mismatch (stored {stored:04x}, computed {computed:04x}): "
            "the file is damaged or truncated"
        )
    version = data[len(MAGIC)]
    if version not in VERSIONS:  # judged after the checksum: a flipped bit is damage, not a version
        raise UnsupportedVersionError(
            f"unsupported .latentz format version {version}; this latentz reads versions 1, 2 and 3"
        )
    reader = _Reader(body, len(body))
    reader.take(len(MAGIC) + 1, "magic")
    fingerprint = reader.take(FINGERPRINT_BYTES, "model fingerprint")
    entropy_id = reader.take(1, "entropy model id")[0]
    height = reader.varint("image height")
    width = reader.varint("image width")
    packed = reader.take(1, "channels and latent rank")[0]
    channels, rank = packed >> 4, packed & 0x0F
    if rank not in LATENT_RANKS:
        raise LatentzFormatError(f"corrupt .latentz header: latent rank {rank} (expected 1 or 3)")
    latent_shape = tuple(reader.varint("latent shape") for _ in range(rank))
    if version in RATE_DISTORTION_VERSIONS:
        step, quality = 1, reader.take(1, "quality")[0]
        if rank != 3 or quality > 100:
            raise LatentzFormatError(
                f"corrupt .latentz header: version {version} with rank {rank}, quality {quality}"
            )
    else:
        step, quality = reader.varint("quantisation step"), 0
    header = Header(
        version=version,
        quality=quality,
        fingerprint=fingerprint,
        entropy_id=entropy_id,
        height=height,
        width=width,
        channels=channels,
        latent_shape=latent_shape,
        step=step,
    )
    return header, body[reader.pos :]


def header_bytes(header: Header) -> int:
    """Bytes a file spends on everything but the payload (header fields and checksum)."""
    return len(pack(header, b""))
