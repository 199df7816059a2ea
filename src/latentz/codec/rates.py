"""What a symbol costs under the integer tables, and the encoder's choices made from it (torch-free).

`code_lengths` is the range coder's ideal length of each symbol, escapes included: the planar
payload picks its table with it, and `quantize_rd` its symbols. Given ẑ, every element of ``y``
has its probability table, so what the coder spends on one element does not depend on the
others, and an encoder can choose each symbol on its own: plain rounding of ``r = (y - μ) /
step``, or one step nearer zero where the bits that saves are worth more than the error it adds,
as classic encoders' RDOQ does. The decoder is unchanged (any symbols decode), so this is the
encoder's business alone and may use floating point freely;
`latentz.hyper_runtime.HyperpriorRuntime.penalty` prices the error.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from latentz.codec.hyper import ESCAPE_LENGTH_ALPHABET, PMF_BITS, IntegerTables, quantize


@lru_cache(maxsize=8)
def _entry_bits(tables: IntegerTables) -> np.ndarray:
    """(count, longest table): the ideal code length in bits of each table's entries, its escape
    entry last; columns past a table's end are never read (infinite)."""
    bits = np.full((tables.count, max(len(pmf) for pmf in tables.pmfs)), np.inf)
    for table, pmf in enumerate(tables.pmfs):
        bits[table, : len(pmf)] = PMF_BITS - np.log2(pmf.astype(np.float64))
    return bits


def code_lengths(tables: IntegerTables, tables_used: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bits the range coder spends on each of ``values`` under its table ``tables_used`` (same
    shapes), escapes included with their overshoot code: the ideal lengths, which a whole payload
    meets within a few bytes."""
    entries = values - tables.offsets[tables_used]
    sizes = tables.sizes[tables_used]
    escaped = (entries < 0) | (entries >= sizes)
    bits = _entry_bits(tables)[tables_used, np.where(escaped, sizes, entries)]
    if not escaped.any():
        return bits
    overshoot = np.where(entries >= sizes, entries - sizes, -1 - entries)
    length = np.floor(np.log2(np.maximum(overshoot, 0) + 1.0)) + 1  # Elias gamma of overshoot + 1
    extra = 1 + math.log2(ESCAPE_LENGTH_ALPHABET) + (length - 1)
    return np.where(escaped, bits + extra, bits)


def quantize_rd(
    latent: np.ndarray,
    mean: np.ndarray,
    steps: np.ndarray,
    indices: np.ndarray,
    tables: IntegerTables,
    penalty: np.ndarray,
) -> np.ndarray:
    """Symbols of a latent (M, h, w): each is `quantize`'s rounding or one step nearer zero,
    whichever costs less in ``bits + penalty_c * (r - symbol)²`` with ``r = (y - μ) / step``.

    ``indices`` are the elements' Gaussian tables in ``tables``; ``penalty`` (M,) prices channel
    ``c``'s squared error, in symbol units, in bits.
    """
    rounded = quantize(latent, mean, steps)
    residual = (np.asarray(latent, np.float64) - mean.astype(np.float64)) / steps.reshape(-1, 1, 1)
    nearer_zero = rounded - np.sign(rounded)
    weight = np.asarray(penalty, np.float64).reshape(-1, 1, 1)
    cost_rounded = code_lengths(tables, indices, rounded) + weight * (residual - rounded) ** 2
    cost_nearer = code_lengths(tables, indices, nearer_zero) + weight * (residual - nearer_zero) ** 2
    return np.where(cost_nearer < cost_rounded, nearer_zero, rounded)
