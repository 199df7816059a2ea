"""The planar payload (format version 3): the rate-distortion codec's second way to code a latent,
for images whose latent is flat or a plane, where the hyperprior pays far more than it should.

Why. The hyperprior codes every hyper-latent value under a factorised prior (about one bit each
even at its mode) and every latent element under a Gaussian around a mean that the hyper-decoder
predicts with a small periodic error; on a flat grey 300x200 image that is 330 bytes for the
hyper-latent alone and 200 to 2,300 bytes for the latent, where WebP needs 160 to 190 for the
whole file. A flat image's latent is constant inside and changes only in a ring at the borders,
so its quantised symbols ``q = round(y / step)`` are almost exactly predicted by their left, upper
and upper-left neighbours (the planar predictor ``left + up - up_left`` of lossless image coders).

How. The residual of that prediction is the mixed second difference of ``q`` (each channel, zero
outside the latent), an integer array that is all zeros where ``q`` is a plane; the decoder
integrates it back with two cumulative sums, so the path is exact integer arithmetic and needs no
mean, no hyper-latent and no network. Every residual is coded under one of the codec's Gaussian
tables, the one that makes the payload shortest, named by the payload's first byte. The encoder
(`HyperpriorCoder.encode_smallest`) codes a file this way only when it is smaller than the
hyperprior payload at the same quality, so a photo is never worse off; the quantisation step is
the quality's, so quality means the same in both.
"""

from __future__ import annotations

import math

import numpy as np

from latentz.codec import hyper, rates
from latentz.codec.integer_network import HyperCodecError


def residuals(symbols: np.ndarray) -> np.ndarray:
    """Planar-prediction residuals of integer symbols (C, h, w): ``q - left - up + up_left``,
    with zeros outside the latent (so the first element of each channel is itself)."""
    padded = np.pad(np.asarray(symbols, dtype=np.int64), ((0, 0), (1, 0), (1, 0)))
    return np.diff(np.diff(padded, axis=1), axis=2)


def integrate(residual: np.ndarray) -> np.ndarray:
    """Inverse of `residuals`: two cumulative sums (exact in int64: |symbols| stay below 2**50)."""
    return np.cumsum(np.cumsum(np.asarray(residual, dtype=np.int64), axis=1), axis=2)


def entropy_bound_bits(residual: np.ndarray) -> float:
    """A lower bound on the bits of any payload of `encode` for ``residual``: its count times the
    empirical entropy of its values (tails beyond ±255 merged, which only lowers it). One pass, so
    the encoder can rule the planar payload out for a photo before `estimated_bits` looks at 64 tables."""
    counts = np.bincount((np.clip(residual, -255, 256) + 255).ravel())
    counts = counts[counts > 0].astype(np.float64)
    return float(-(counts * np.log2(counts / counts.sum())).sum())


def estimated_bits(residual: np.ndarray, tables: hyper.IntegerTables) -> tuple[int, float]:
    """(table, ideal bits) of the Gaussian table that codes ``residual`` in the fewest bits,
    escapes counted with their Elias-gamma overshoot."""
    values, counts = np.unique(residual, return_counts=True)
    best = (0, math.inf)
    for table in range(tables.count):
        used = np.full(len(values), table, dtype=np.int64)
        bits = float(np.sum(counts * rates.code_lengths(tables, used, values)))
        if bits < best[1]:
            best = (table, bits)
    return best


def encode(symbols: np.ndarray, tables: hyper.IntegerTables, table: int | None = None) -> bytes:
    """Integer symbols (C, h, w) -> the planar payload: the table byte, then the range-coded
    residuals (under ``table``, by default the one `estimated_bits` finds best)."""
    import constriction

    from latentz.codec.entropy import _shortest_payload

    residual = residuals(symbols)
    if np.abs(residual).max(initial=0) > hyper.MAX_SYMBOL:
        raise ValueError(f"planar residuals beyond ±{hyper.MAX_SYMBOL}")
    if table is None:
        table, _ = estimated_bits(residual, tables)
    used = np.full(residual.size, table, dtype=np.int64)
    encoder = constriction.stream.queue.RangeEncoder()
    hyper._encode_grouped(encoder, residual.ravel(), used, tables, _one_group(table, residual.size))
    full = encoder.get_compressed().astype(">u4").tobytes()

    def decodes_right(candidate: bytes) -> bool:
        try:
            return np.array_equal(decode(bytes([table]) + candidate, residual.shape, tables), symbols)
        except HyperCodecError:
            return False

    return bytes([table]) + _shortest_payload(full, decodes_right)


def _one_group(table: int, count: int) -> list[tuple[int, np.ndarray]]:
    """Every element under one table, in raster order (what `hyper._groups` would sort out)."""
    return [(table, np.arange(count))]


def decode(payload: bytes, shape: tuple[int, int, int], tables: hyper.IntegerTables) -> np.ndarray:
    """Inverse of `encode`: the payload of a latent of ``shape`` -> its integer symbols."""
    if not payload:
        raise HyperCodecError("the planar payload is empty: it has no table byte")
    table = payload[0]
    if table >= tables.count:
        raise HyperCodecError(f"the planar payload names table {table}; there are {tables.count}")
    count = math.prod(shape)
    used = np.full(count, table, dtype=np.int64)
    try:
        decoder = hyper._range_decoder(payload[1:])
        residual = hyper._decode_grouped(decoder, used, tables, _one_group(table, count)).reshape(shape)
    except (AssertionError, RuntimeError) as error:  # constriction's "invalid data"
        raise HyperCodecError(f"the planar payload does not decode with these tables ({error})") from None
    return integrate(residual)
