"""The .latentz codec: quantise a posterior mean, range-code it, wrap it in a checked container.

Torch-free and network-free: this package turns latents into bytes and back. Running the encoder
and decoder networks is `latentz.runtime`'s job; it calls `encode_latent` and `decode_latent`.
"""

from __future__ import annotations

import numpy as np

from latentz.codec.entropy import (
    FINE_PER_UNIT,
    QUALITY_STEPS,
    EntropyModel,
    EntropyModelError,
    decode_symbols,
    encode_symbols,
    fit,
    step_for_quality,
    step_from_units,
)
from latentz.codec.format import (
    FINGERPRINT_BYTES,
    RATE_DISTORTION_VERSIONS,
    VERSION_HYPERPRIOR,
    VERSION_PLANAR,
    BadMagicError,
    ChecksumError,
    CodecSettingError,
    Header,
    LatentzFormatError,
    ModelMismatchError,
    TruncatedFileError,
    UnsupportedVersionError,
    header_bytes,
    pack,
    unpack,
)

__all__ = [
    "FINE_PER_UNIT",
    "FINGERPRINT_BYTES",
    "QUALITY_STEPS",
    "RATE_DISTORTION_VERSIONS",
    "VERSION_HYPERPRIOR",
    "VERSION_PLANAR",
    "BadMagicError",
    "ChecksumError",
    "CodecSettingError",
    "EntropyModel",
    "EntropyModelError",
    "Header",
    "LatentzFormatError",
    "ModelMismatchError",
    "TruncatedFileError",
    "UnsupportedVersionError",
    "check_model",
    "decode_latent",
    "decode_payload",
    "encode_latent",
    "fit",
    "header_bytes",
    "pack",
    "step_for_quality",
    "step_from_units",
    "unpack",
]


def encode_latent(
    latent: np.ndarray,
    *,
    entropy: EntropyModel,
    step: int,
    fingerprint: str,
    height: int,
    width: int,
    channels: int,
) -> bytes:
    """One image's posterior mean ``(C,)`` or ``(C, h, w)`` -> the bytes of a .latentz file."""
    latent = np.asarray(latent, dtype=np.float32)
    if not np.all(np.isfinite(latent)):
        raise ValueError("the latent holds NaN or infinite values; the encoder output is unusable")
    symbols = entropy.quantise(latent, step)
    header = Header(
        fingerprint=bytes.fromhex(fingerprint)[:FINGERPRINT_BYTES],
        entropy_id=entropy.id,
        height=height,
        width=width,
        channels=channels,
        latent_shape=tuple(int(d) for d in latent.shape),
        step=step,
    )
    return pack(header, encode_symbols(entropy, symbols, step))


def check_model(header: Header, *, fingerprint: str, entropy: EntropyModel, model_name: str) -> None:
    """Refuse a file made by another model, naming both sides."""
    ours = bytes.fromhex(fingerprint)[:FINGERPRINT_BYTES]
    if header.fingerprint != ours:
        raise ModelMismatchError(
            f"this file was made by a model with fingerprint {header.fingerprint_hex}, but "
            f"{model_name} has fingerprint {ours.hex()}; decode it with the model that encoded it"
        )
    if header.entropy_id != entropy.id:
        raise ModelMismatchError(
            f"this file was coded with entropy model {header.entropy_id:02x}, but {model_name}'s entropy "
            f"model is {entropy.id:02x} (it was refitted); re-encode the image or use the original bundle"
        )


def decode_payload(header: Header, payload: bytes, *, entropy: EntropyModel) -> np.ndarray:
    """An unpacked, checked file's payload -> the dequantised latent as float32.

    Allocates the latent the header declares: check the header (`check_model`, and
    `latentz.codec.limits`) before calling this.
    """
    if header.latent_shape[0] != entropy.channels:
        raise ModelMismatchError(
            f"the file's latent has {header.latent_shape[0]} channels, the model has {entropy.channels}"
        )
    try:
        symbols = decode_symbols(entropy, payload, header.latent_shape, header.step)
    except ValueError as error:
        raise LatentzFormatError(f"corrupt payload: {error}") from None
    return entropy.dequantise(symbols, header.step)


def decode_latent(
    data: bytes, *, entropy: EntropyModel, fingerprint: str, model_name: str
) -> tuple[Header, np.ndarray]:
    """Bytes of a .latentz file -> (its header, the dequantised latent as float32)."""
    header, payload = unpack(data)
    check_model(header, fingerprint=fingerprint, entropy=entropy, model_name=model_name)
    return header, decode_payload(header, payload, entropy=entropy)
