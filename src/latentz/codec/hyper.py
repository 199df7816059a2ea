"""The bit-exact half of the hyperprior photo codec (v2): integer CDF tables, the integer
hyper-decoder and the range coding of both latents. numpy and constriction only, no torch.

Why integers. A mean-scale hyperprior (Minnen et al. 2018) codes each latent element under a
Gaussian whose scale a network predicts from the hyper-latent ``z``. If that network ran in
floating point, a decoder whose BLAS sums in another order could pick another scale for one
element and every symbol after it would decode to garbage. So, after Ballé, Johnston & Minnen
2019 ("Integer networks for data compression with latent-variable models"), the path from the
decoded integers ``ẑ`` to the *index* of each element's probability table is integer arithmetic
on integer parameters (`IntegerHyperDecoder`), and the tables themselves are integer counts
computed once (`GaussianTables`), so a decoder never evaluates ``exp`` or ``erf``. The network
itself lives in `latentz.codec.integer_network`.

The scale of element ``i`` in *symbol units* (after dividing by the quantisation step) is
``SCALE_MIN * SCALE_RATIO ** j`` for the table index ``j = clip(v_i - k_c, 0, SCALE_LEVELS - 1)``,
where ``v_i`` is the integer network's output and ``k_c`` the channel's integer gain offset for the
chosen quality: the quantisation step of channel ``c`` is ``SCALE_RATIO ** k_c``, so dividing by
it shifts a log-spaced scale table by exactly ``k_c`` entries. The mean ``μ`` comes from the same
integer accumulators times a float32 scale; it is subtracted before quantisation (symbols are
``round((y - μ) / step)``) and so only moves the reconstruction, never a probability.

Range coding. One `constriction` queue range coder carries ``ẑ`` first (each channel under its
factorised table), then ``y`` grouped by table index (one `Categorical` per index used, so an
image costs a few dozen model constructions, not one per element). Values outside a table's
range are coded as its escape entry followed by an Elias-gamma code of the overshoot.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from latentz.codec.integer_network import ACTIVATION_MAX as ACTIVATION_MAX  # re-exported, with:
from latentz.codec.integer_network import HYPER_INPUT_MAX as HYPER_INPUT_MAX
from latentz.codec.integer_network import WEIGHT_MAX as WEIGHT_MAX
from latentz.codec.integer_network import HyperCodecError as HyperCodecError
from latentz.codec.integer_network import IntegerConv as IntegerConv
from latentz.codec.integer_network import IntegerHyperDecoder as IntegerHyperDecoder
from latentz.codec.integer_network import pixel_shuffle as pixel_shuffle

SCALE_MIN = 0.11
SCALE_MAX = 256.0
SCALE_LEVELS = 64
#: Ratio between neighbouring scales of the table, as in CompressAI's ``get_scale_table``.
#: Only table building and training use it (the decoder sees integer tables and indices); the
#: reconstruction uses it for the quantisation step ``SCALE_RATIO ** k``.
SCALE_RATIO = math.exp((math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (SCALE_LEVELS - 1))
TAIL_MASS = 1e-9
"""Probability left outside a table's explicit entries (both sides together), coded by escape."""
PMF_BITS = 20
"""Every table's counts sum to ``2 ** PMF_BITS``; each entry has at least 1."""
MAX_SYMBOL = 1 << 22
"""Largest symbol magnitude the escape code carries (a latent this far out is a broken encoder)."""
ESCAPE_LENGTH_ALPHABET = 24


# -- integer probability tables -------------------------------------------------------------------
def quantize_pmf(probabilities: np.ndarray, escape: float) -> np.ndarray:
    """Float probabilities of ``n`` symbols plus an escape mass -> ``n + 1`` integer counts that sum
    to ``2 ** PMF_BITS`` with every count at least 1 (so every symbol and the escape stay codable).

    Each entry gets 1 plus its share of the rest rounded down; what rounding leaves over goes to
    the entries with the largest remainders (ties to the first). Run once when tables are built.
    """
    probs = np.append(np.asarray(probabilities, dtype=np.float64), float(escape))
    if probs.ndim != 1 or len(probs) < 2 or not np.all(np.isfinite(probs)):
        raise HyperCodecError("a table needs at least one finite probability and an escape")
    probs = np.maximum(probs, 0.0)
    if probs.sum() <= 0:
        raise HyperCodecError("a table's probabilities must not all be zero")
    total = 1 << PMF_BITS
    if len(probs) > total // 2:
        raise HyperCodecError(f"a table of {len(probs)} entries does not fit {PMF_BITS}-bit counts")
    shares = probs / probs.sum() * (total - len(probs))
    counts = 1 + np.floor(shares).astype(np.int64)
    left_over = total - int(counts.sum())
    order = np.argsort(-(shares - np.floor(shares)), kind="stable")
    counts[order[:left_over]] += 1
    return counts


@dataclass(frozen=True, eq=False)
class IntegerTables:
    """A family of integer probability tables: table ``t`` codes the symbols ``offsets[t] ..
    offsets[t] + len(pmfs[t]) - 2``; its last entry is the escape. Each pmf sums to ``2**PMF_BITS``.
    """

    offsets: np.ndarray
    pmfs: tuple[np.ndarray, ...]
    _models: dict[int, object] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        offsets = np.asarray(self.offsets)
        if offsets.ndim != 1 or len(offsets) != len(self.pmfs) or not len(self.pmfs):
            raise HyperCodecError("tables need one offset per pmf, and at least one pmf")
        if not np.issubdtype(offsets.dtype, np.integer):
            raise HyperCodecError("table offsets must be integers")
        for index, pmf in enumerate(self.pmfs):
            if pmf.ndim != 1 or len(pmf) < 2 or not np.issubdtype(pmf.dtype, np.integer):
                raise HyperCodecError(f"table {index}: a pmf is a 1-d integer array of 2 or more counts")
            if pmf.min() < 1 or int(pmf.sum()) != 1 << PMF_BITS:
                raise HyperCodecError(f"table {index}: counts must be >= 1 and sum to 2**{PMF_BITS}")

    @property
    def count(self) -> int:
        return len(self.pmfs)

    @property
    def sizes(self) -> np.ndarray:
        """Explicit symbols per table (the escape entry not counted)."""
        return np.array([len(pmf) - 1 for pmf in self.pmfs], dtype=np.int64)

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256(np.asarray([PMF_BITS, self.count], dtype="<i8").tobytes())
        digest.update(np.asarray(self.offsets, dtype="<i8").tobytes())
        for pmf in self.pmfs:
            digest.update(np.asarray([len(pmf)], dtype="<i8").tobytes())
            digest.update(pmf.astype("<i8").tobytes())
        return digest.hexdigest()

    def bits(self, table: int, symbol: int) -> float:
        """Ideal code length of ``symbol`` under table ``table`` (escape overshoot not counted)."""
        entry = symbol - int(self.offsets[table])
        pmf = self.pmfs[table]
        entry = entry if 0 <= entry < len(pmf) - 1 else len(pmf) - 1
        return PMF_BITS - math.log2(int(pmf[entry]))

    def categorical(self, table: int) -> object:
        """constriction's model for table ``table``: the counts over ``2**PMF_BITS``, exact in float64."""
        model = self._models.get(table)
        if model is None:
            import constriction

            probabilities = self.pmfs[table].astype(np.float64) / float(1 << PMF_BITS)
            model = constriction.stream.model.Categorical(probabilities, perfect=False)
            self._models[table] = model
        return model

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat arrays for a bundle file: offsets, lengths and all counts concatenated."""
        return {
            "offsets": np.asarray(self.offsets, dtype=np.int64),
            "lengths": np.array([len(pmf) for pmf in self.pmfs], dtype=np.int64),
            "counts": np.concatenate(self.pmfs).astype(np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> IntegerTables:
        try:
            lengths = np.asarray(arrays["lengths"], dtype=np.int64)
            counts = np.asarray(arrays["counts"])
            if lengths.ndim != 1 or lengths.min(initial=2) < 2 or int(lengths.sum()) != len(counts):
                raise HyperCodecError("table lengths do not match the counts")
            pmfs = tuple(np.split(counts.astype(np.int64), np.cumsum(lengths)[:-1]))
            return cls(offsets=np.asarray(arrays["offsets"]), pmfs=pmfs)
        except KeyError as error:
            raise HyperCodecError(f"tables lack the array {error}") from None


def scale_table() -> np.ndarray:
    """The scales (symbol units) of the Gaussian tables: ``SCALE_MIN * SCALE_RATIO ** j``."""
    return SCALE_MIN * SCALE_RATIO ** np.arange(SCALE_LEVELS, dtype=np.float64)


def build_gaussian_tables(scales: Sequence[float] | None = None) -> IntegerTables:
    """One integer table per scale of a zero-mean Gaussian integrated over unit bins.

    Table ``j`` covers ``-R .. R`` with ``R = ceil(scale * z)``, ``z`` the two-sided ``TAIL_MASS``
    quantile; the mass beyond is its escape. Built once, with ``math.erfc`` in float64, and then
    stored and used as integers.
    """
    scales = scale_table() if scales is None else np.asarray(scales, dtype=np.float64)
    quantile = -NormalDist().inv_cdf(TAIL_MASS / 2)
    offsets, pmfs = [], []
    for scale in scales:
        radius = max(1, math.ceil(scale * quantile))
        edges = (np.arange(-radius, radius + 2, dtype=np.float64) - 0.5) / scale
        upper_tail = np.array([0.5 * math.erfc(edge / math.sqrt(2.0)) for edge in edges])
        probabilities = upper_tail[:-1] - upper_tail[1:]
        escape = 2.0 * upper_tail[-1]
        offsets.append(-radius)
        pmfs.append(quantize_pmf(probabilities, escape))
    return IntegerTables(offsets=np.asarray(offsets, dtype=np.int64), pmfs=tuple(pmfs))


def factorized_tables(lows: Sequence[int], probabilities: Sequence[np.ndarray]) -> IntegerTables:
    """Integer tables of a factorised prior: channel ``c`` codes ``lows[c] ..`` with the given float
    probabilities (from the trained density, once, at export); the rest of the mass is the escape."""
    pmfs = []
    for probs in probabilities:
        probs = np.asarray(probs, dtype=np.float64)
        pmfs.append(quantize_pmf(probs, max(0.0, 1.0 - float(probs.sum()))))
    return IntegerTables(offsets=np.asarray(lows, dtype=np.int64), pmfs=tuple(pmfs))


def scale_indices(raw_index: np.ndarray, gain_offsets: np.ndarray) -> np.ndarray:
    """Table index per element: ``clip(v - k_c, 0, SCALE_LEVELS - 1)`` (integers in, integers out)."""
    offsets = np.asarray(gain_offsets, dtype=np.int64).reshape(-1, *([1] * (raw_index.ndim - 1)))
    return np.clip(raw_index - offsets, 0, SCALE_LEVELS - 1)


def gain_offsets_for_quality(levels: np.ndarray, quality: int) -> np.ndarray:
    """Per-channel integer gain offsets for ``quality`` 0..100 from the trained ``levels`` (J, M),
    ordered from the lowest rate to the highest: linear interpolation in integers, ties upward."""
    levels = np.asarray(levels, dtype=np.int64)
    if isinstance(quality, bool) or not 0 <= int(quality) <= 100 or int(quality) != quality:
        raise ValueError(f"quality must be an integer between 0 and 100, got {quality!r}")
    if len(levels) == 1:
        return levels[0].copy()
    position = int(quality) * (len(levels) - 1)
    below, fraction = divmod(position, 100)
    if fraction == 0:
        return levels[below].copy()
    return (levels[below] * (100 - fraction) + levels[below + 1] * fraction + 50) // 100


def lambda_for_quality(lambdas: Sequence[float], quality: int) -> float:
    """The rate-distortion trade-off ``quality`` 0..100 stands for: the trained ``lambdas`` (lowest
    first) interpolated geometrically at the position `gain_offsets_for_quality` interpolates the
    offsets (which are logarithms of the step)."""
    if not lambdas or min(lambdas) <= 0:
        raise ValueError(f"lambdas must be positive, got {list(lambdas)}")
    position = int(quality) * (len(lambdas) - 1) / 100
    return float(np.exp(np.interp(position, np.arange(len(lambdas)), np.log(np.asarray(lambdas, float)))))


def step_sizes(gain_offsets: np.ndarray) -> np.ndarray:
    """Quantisation step per channel, ``SCALE_RATIO ** k`` (float64; enters only the pixels)."""
    return np.power(SCALE_RATIO, np.asarray(gain_offsets, dtype=np.float64))


def quantize(latent: np.ndarray, mean: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Symbols ``round((y - μ) / step)`` (ties upward) of a latent (M, h, w), clamped to ±MAX_SYMBOL."""
    scaled = (np.asarray(latent, np.float64) - mean.astype(np.float64)) / steps.reshape(-1, 1, 1)
    return np.clip(np.floor(scaled + 0.5), -MAX_SYMBOL, MAX_SYMBOL).astype(np.int64)


def dequantize(symbols: np.ndarray, mean: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The decoder's latent ``symbol * step + μ`` (float32)."""
    return (symbols * steps.reshape(-1, 1, 1) + mean.astype(np.float64)).astype(np.float32)


# -- range coding ---------------------------------------------------------------------------------
def _uniform(size: int) -> object:
    import constriction

    return constriction.stream.model.Uniform(size)


def _groups(tables_used: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(table, positions in ascending order) for each table used, tables ascending."""
    order = np.argsort(tables_used, kind="stable")
    tables, starts = np.unique(tables_used[order], return_index=True)
    return [(int(t), part) for t, part in zip(tables, np.split(order, starts[1:]), strict=True)]


def _encode_grouped(
    encoder: object,
    values: np.ndarray,
    tables_used: np.ndarray,
    tables: IntegerTables,
    groups: list[tuple[int, np.ndarray]] | None = None,
    checkpoints: list[tuple[int, object]] | None = None,
) -> np.ndarray:
    """Code ``values`` (flat int64) element ``i`` under table ``tables_used[i]``: table by table in
    ascending order, each table's elements in flat order, then every escape's overshoot in flat order.
    ``groups`` is ``_groups(tables_used)`` when the caller has it already; ``checkpoints``, when
    given, receives (group number, ``encoder.pos()``) before each group. Returns the table entries
    coded (an escape's entry being the table size), which `_decode_grouped` takes as ``known``."""
    entries = values - tables.offsets[tables_used]
    sizes = tables.sizes[tables_used]
    escaped = (entries < 0) | (entries >= sizes)
    coded = np.where(escaped, sizes, entries).astype(np.int32)
    for number, (table, positions) in enumerate(groups if groups is not None else _groups(tables_used)):
        if checkpoints is not None:
            checkpoints.append((number, encoder.pos()))
        encoder.encode(coded[positions], tables.categorical(table))
    for entry, size in zip(entries[escaped], sizes[escaped], strict=True):
        above = entry >= size
        overshoot = int(entry - size) if above else int(-1 - entry)
        length = (overshoot + 1).bit_length()  # Elias gamma of overshoot + 1
        encoder.encode(int(above), _uniform(2))
        encoder.encode(length - 1, _uniform(ESCAPE_LENGTH_ALPHABET))
        if length > 1:
            encoder.encode((overshoot + 1) - (1 << (length - 1)), _uniform(1 << (length - 1)))
    return coded


def _decode_grouped(
    decoder: object,
    tables_used: np.ndarray,
    tables: IntegerTables,
    groups: list[tuple[int, np.ndarray]] | None = None,
    known: np.ndarray | None = None,
) -> np.ndarray:
    """Inverse of `_encode_grouped` for elements whose tables are ``tables_used`` (flat). With
    ``known`` (the coded entries, from the encoder) only ``groups`` are decoded, over it: a decoder
    sought to a checkpoint before those groups checks the end of a stream without the rest."""
    coded = np.empty(len(tables_used), dtype=np.int64) if known is None else known.astype(np.int64)
    for table, positions in groups if groups is not None else _groups(tables_used):
        coded[positions] = decoder.decode(tables.categorical(table), len(positions))
    sizes = tables.sizes[tables_used]
    values = coded + tables.offsets[tables_used]
    for position in np.flatnonzero(coded == sizes):
        above = int(decoder.decode(_uniform(2)))
        length = int(decoder.decode(_uniform(ESCAPE_LENGTH_ALPHABET))) + 1
        rest = int(decoder.decode(_uniform(1 << (length - 1)))) if length > 1 else 0
        overshoot = (1 << (length - 1)) + rest - 1
        table_start = int(tables.offsets[tables_used[position]])
        if above:
            values[position] = table_start + int(sizes[position]) + overshoot
        else:
            values[position] = table_start - 1 - overshoot
    return values


def _range_decoder(payload: bytes) -> object:
    """constriction's queue decoder over ``payload`` (zero-padded to whole 32-bit words)."""
    import constriction

    padded = payload + b"\0" * (-len(payload) % 4)
    return constriction.stream.queue.RangeDecoder(np.frombuffer(padded, dtype=">u4").astype(np.uint32))


def _check_symbols(symbols: np.ndarray, name: str) -> np.ndarray:
    symbols = np.asarray(symbols)
    if not np.issubdtype(symbols.dtype, np.integer):
        raise ValueError(f"{name} symbols must be integers")
    if np.abs(symbols).max(initial=0) > MAX_SYMBOL:
        raise ValueError(f"{name} symbols beyond ±{MAX_SYMBOL}")
    return symbols.astype(np.int64)


def encode_latents(
    z_symbols: np.ndarray,
    y_symbols: np.ndarray,
    indices: np.ndarray,
    hyper_tables: IntegerTables,
    gaussian_tables: IntegerTables,
) -> bytes:
    """Range-code ``ẑ`` (Cz, hz, wz) under the factorised tables (one per channel), then the
    symbols of ``y`` (M, h, w) under the Gaussian table ``indices`` names for each element.

    The payload is the shortest byte string that decodes back to both (optimal termination,
    as in `latentz.codec.entropy`), verified by decoding each candidate.
    """
    import constriction

    from latentz.codec.entropy import _shortest_payload

    z_symbols, y_symbols = _check_symbols(z_symbols, "z"), _check_symbols(y_symbols, "y")
    if z_symbols.ndim != 3 or z_symbols.shape[0] != hyper_tables.count:
        raise ValueError(f"z must be ({hyper_tables.count}, h, w), got {z_symbols.shape}")
    if indices.shape != y_symbols.shape or y_symbols.ndim != 3:
        raise ValueError(f"y symbols {y_symbols.shape} and scale indices {indices.shape} must match")
    if indices.min(initial=0) < 0 or indices.max(initial=0) >= gaussian_tables.count:
        raise ValueError("scale indices outside the Gaussian tables")
    z_tables = np.broadcast_to(np.arange(hyper_tables.count)[:, None, None], z_symbols.shape).ravel()
    y_tables = indices.ravel().astype(np.int64)
    # Sorted once: the optimal termination below decodes several candidate endings of one stream.
    z_groups, y_groups = _groups(z_tables), _groups(y_tables)
    encoder = constriction.stream.queue.RangeEncoder()
    _encode_grouped(encoder, z_symbols.ravel(), z_tables, hyper_tables, z_groups)
    checkpoints: list[tuple[int, object]] = []
    y_coded = _encode_grouped(encoder, y_symbols.ravel(), y_tables, gaussian_tables, y_groups, checkpoints)
    full = encoder.get_compressed().astype(">u4").tobytes()

    def decodes_right(candidate: bytes) -> bool:
        try:
            decoder = _range_decoder(candidate)
            z = _decode_grouped(decoder, z_tables, hyper_tables, z_groups)
            y = _decode_grouped(decoder, y_tables, gaussian_tables, y_groups)
        except (AssertionError, RuntimeError, ValueError):
            return False
        return np.array_equal(z, z_symbols.ravel()) and np.array_equal(y, y_symbols.ravel())

    # A candidate ending differs from `full` only in its last bytes, and a range decoder reads at
    # most two words past the point it has decoded to: every symbol coded before a checkpoint at
    # word p decodes as in `full` when the candidate agrees with it up to byte 4 (p + 3). So such
    # a candidate is checked by seeking to the checkpoint and decoding only the groups after it.
    # The ending chosen is then decoded whole; should that ever fail, every ending is re-checked
    # whole, so the result is always a verified decode.
    stream_end = len(full.rstrip(b"\0"))
    usable = [(number, pos) for number, pos in checkpoints if 4 * (pos[0] + 3) <= stream_end - 8]
    if not usable:
        return _shortest_payload(full, decodes_right)
    first_group, (position, state) = usable[-1]
    agreed_bytes = 4 * (position + 3)

    def tail_decodes_right(candidate: bytes) -> bool:
        padded = candidate.ljust(agreed_bytes, b"\0")[:agreed_bytes]
        if padded != full[:agreed_bytes]:
            return decodes_right(candidate)
        try:
            decoder = _range_decoder(candidate)
            decoder.seek(position, state)
            y = _decode_grouped(decoder, y_tables, gaussian_tables, y_groups[first_group:], y_coded)
        except (AssertionError, RuntimeError, ValueError):
            return False
        return np.array_equal(y, y_symbols.ravel())

    payload = _shortest_payload(full, tail_decodes_right)
    return payload if decodes_right(payload) else _shortest_payload(full, decodes_right)


def decode_latents(
    payload: bytes,
    z_shape: tuple[int, int, int],
    y_shape: tuple[int, int, int],
    hyper_tables: IntegerTables,
    gaussian_tables: IntegerTables,
    indices_for: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `encode_latents`: decode ``ẑ``, ask ``indices_for(ẑ)`` (the integer hyper-decoder
    and the gain offsets) for the table of every ``y`` element, decode ``y``. Returns both."""

    if len(z_shape) != 3 or z_shape[0] != hyper_tables.count or len(y_shape) != 3:
        raise ValueError(f"shapes {z_shape}, {y_shape} do not fit tables of {hyper_tables.count} channels")
    decoder = _range_decoder(payload)
    z_tables = np.broadcast_to(np.arange(hyper_tables.count)[:, None, None], z_shape).ravel()
    try:
        z = _decode_grouped(decoder, z_tables, hyper_tables).reshape(z_shape)
        indices = np.asarray(indices_for(z))
        if indices.shape != tuple(y_shape) or indices.min() < 0 or indices.max() >= gaussian_tables.count:
            raise HyperCodecError(f"scale indices of shape {indices.shape} do not fit latent {y_shape}")
        y = _decode_grouped(decoder, indices.ravel().astype(np.int64), gaussian_tables).reshape(y_shape)
    except (AssertionError, RuntimeError) as error:  # constriction's "invalid data"
        raise HyperCodecError(f"the payload does not decode with these tables ({error})") from None
    return z, y
