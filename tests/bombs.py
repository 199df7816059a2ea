"""Hostile .latentz files for the tests: tiny, valid (right CRC, right model), declaring huge images."""

from __future__ import annotations

from latentz import codec
from latentz.bundle import read_bundle
from latentz.codec.entropy import EntropyModel

BOMB_STEP = 4096
"""The coarsest step: every channel has a one-symbol alphabet, so the payload is empty."""


def declared_size_bomb(model: str, width: int, height: int) -> bytes:
    """A file for ``model`` that says ``width`` x ``height`` in a few bytes (22 for a photo model):
    decoding it naively allocates whatever it declares."""
    info = read_bundle(model)
    entropy = EntropyModel.load(info.file("entropy_model.json"))
    low, high = entropy.symbol_range(BOMB_STEP)
    assert (low == high).all(), "the bomb relies on an empty payload"
    header = codec.Header(
        fingerprint=bytes.fromhex(info.fingerprint)[: codec.FINGERPRINT_BYTES],
        entropy_id=entropy.id,
        height=height,
        width=width,
        channels=info.config.channels,
        latent_shape=info.config.latent_shape(height, width),
        step=BOMB_STEP,
    )
    return codec.pack(header, b"")
