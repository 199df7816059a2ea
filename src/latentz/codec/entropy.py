"""Integer entropy models for quantised latents, and range coding of the symbols with constriction.

Why integers. CompressAI computes its entropy model's CDFs from floats at decode time, so a file
written on one machine can decode to garbage on another whose ``exp``/``erf`` round differently.
Here the entropy model is a table of integer counts stored in the bundle; the decoder derives the
probabilities of each step size with integer sums and one correctly rounded IEEE division
(``count / total``), which every IEEE-754 machine computes bit for bit alike. So the symbols
decode identically everywhere and only the final pixels depend on the network.

Quantisation. Every latent channel ``c`` has a *unit* ``u_c``: its mean posterior standard
deviation over the training set, the scale of noise the decoder was trained to ignore. A step of
``s`` units quantises a posterior mean ``mu`` to ``k = round(mu / (s * u_c))`` and the receiver
rebuilds ``k * s * u_c``. Steps are whole multiples ``m`` of a fine step of ``1 / FINE_PER_UNIT``
units; files store ``m``.

The model. Per channel, the training set's posterior means are histogrammed on the fine grid
``j = round(mu * FINE_PER_UNIT / u_c)``, smoothed with a Gaussian kernel of Silverman's bandwidth
(so test images need not hit bins seen in training), normalised to ``2**24`` and floored at 1 so
every value in range stays codable. For step ``m`` the symbol ``k`` gathers the
fine bins with ``(2k - 1) m <= 2j < (2k + 1) m``. Values beyond the fitted range (with a margin)
are clamped to its ends.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from latentz.codec.format import MAX_STEP, CodecSettingError

ENTROPY_FORMAT = 1
FINE_PER_UNIT = 4
"""Fine bins per unit (posterior std): steps are multiples of a quarter unit."""
TOTAL = 1 << 24
"""Each channel's counts sum to about this much (plus the floor of 1 per bin)."""

# fmt: off
QUALITY_STEPS: tuple[int, ...] = (
    256, 242, 229, 217, 205, 194, 184, 174, 164, 155, 147, 139, 132, 124, 118, 111, 105, 100, 94,
    89, 84, 80, 76, 72, 68, 64, 61, 57, 54, 51, 49, 46, 43, 41, 39, 37, 35, 33, 31, 29, 28, 26, 25,
    24, 22, 21, 20, 19, 18, 17, 16, 15, 14, 14, 13, 12, 11, 11, 10, 10, 9, 9, 8, 8, 7, 7, 7, 6, 6,
    6, 5, 5, 5, 4, 4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1,
)
"""Step (fine units) for quality 0..100: ``round(256 ** (1 - q / 100))``, from 64 posterior stds
(the smallest files a confident model can make) down to a quarter (the unquantised decode), written
out so that no machine's ``pow`` can change which step a quality means."""
# fmt: on


class EntropyModelError(ValueError):
    """An entropy model file that is missing, malformed or inconsistent."""


def step_for_quality(quality: int) -> int:
    """The step, in fine units, that ``--quality`` 0..100 selects (higher quality, finer step)."""
    if isinstance(quality, bool) or not isinstance(quality, int | np.integer) or not 0 <= quality <= 100:
        raise CodecSettingError(f"quality must be an integer from 0 to 100, got {quality!r}")
    return QUALITY_STEPS[int(quality)]


def step_from_units(step: float) -> int:
    """An explicit ``--step`` in units of posterior std, as a whole number of fine units."""
    if not np.isfinite(step) or step <= 0:
        raise CodecSettingError(
            f"step must be a positive number of posterior standard deviations, got {step}"
        )
    fine = round(step * FINE_PER_UNIT)
    if not 1 <= fine <= MAX_STEP:
        raise CodecSettingError(
            f"step {step} is outside [{1 / FINE_PER_UNIT}, {MAX_STEP / FINE_PER_UNIT}] posterior stds "
            f"(steps are multiples of {1 / FINE_PER_UNIT})"
        )
    return fine


def _encode_array(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def _decode_array(text: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text, validate=True), dtype=dtype)


@dataclass(frozen=True, eq=False)
class EntropyModel:
    """Per-channel integer histograms on a fine grid, shared by all positions of a channel.

    ``units`` are float32 (one per channel), ``lows`` the fine index of each histogram's first
    bin, ``counts`` one int64 array per channel.
    """

    units: np.ndarray
    lows: np.ndarray
    counts: tuple[np.ndarray, ...]
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.units) != len(self.lows) or len(self.units) != len(self.counts) or not len(self.units):
            raise EntropyModelError("units, lows and counts must have one entry per channel (at least one)")
        if not np.all(np.isfinite(self.units)) or np.any(self.units <= 0):
            raise EntropyModelError("units must be positive and finite")
        for index, counts in enumerate(self.counts):
            if counts.ndim != 1 or not len(counts) or counts.min() < 1:
                raise EntropyModelError(f"channel {index}: counts must be a non-empty array of ints >= 1")

    @property
    def channels(self) -> int:
        return len(self.units)

    @property
    def sha256(self) -> str:
        """Digest of the tables (not of the JSON text), so reformatting the file keeps the id."""
        digest = hashlib.sha256()
        digest.update(np.asarray([ENTROPY_FORMAT, FINE_PER_UNIT], dtype="<i8").tobytes())
        digest.update(self.units.astype("<f4").tobytes())
        digest.update(self.lows.astype("<i8").tobytes())
        for counts in self.counts:
            digest.update(np.asarray([len(counts)], dtype="<i8").tobytes())
            digest.update(counts.astype("<i8").tobytes())
        return digest.hexdigest()

    @property
    def id(self) -> int:
        """One byte that files carry so a refitted entropy model is told apart from the old one."""
        return int(self.sha256[:2], 16)

    # -- quantisation ---------------------------------------------------------------------
    def step_sizes(self, step: int) -> np.ndarray:
        """Per-channel quantisation step in latent units (float64) for ``step`` fine units."""
        return self.units.astype(np.float64) * (step / FINE_PER_UNIT)

    def symbol_range(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Smallest and largest symbol of each channel for ``step``: the coarse bins of lo and hi."""
        lows = self.lows.astype(np.int64)
        highs = lows + np.array([len(c) for c in self.counts], dtype=np.int64) - 1
        return (2 * lows + step) // (2 * step), (2 * highs + step) // (2 * step)

    def quantise(self, latents: np.ndarray, step: int) -> np.ndarray:
        """Posterior means ``(C, ...)`` -> int64 symbols, clamped to each channel's fitted range."""
        latents = np.asarray(latents, dtype=np.float64)
        self._check_channels(latents)
        sizes = self.step_sizes(step).reshape(-1, *([1] * (latents.ndim - 1)))
        symbols = np.floor(latents / sizes + 0.5)
        low, high = self.symbol_range(step)
        shape = (-1, *([1] * (latents.ndim - 1)))
        return np.clip(symbols, low.reshape(shape), high.reshape(shape)).astype(np.int64)

    def dequantise(self, symbols: np.ndarray, step: int) -> np.ndarray:
        """Symbols ``(C, ...)`` -> float32 latents ``k * step size``."""
        symbols = np.asarray(symbols)
        self._check_channels(symbols)
        sizes = self.step_sizes(step).reshape(-1, *([1] * (symbols.ndim - 1)))
        return (symbols.astype(np.float64) * sizes).astype(np.float32)

    def _check_channels(self, array: np.ndarray) -> None:
        if array.ndim < 1 or array.shape[0] != self.channels:
            raise ValueError(f"expected latents with {self.channels} channels first, got shape {array.shape}")

    # -- probabilities --------------------------------------------------------------------
    def probabilities(self, channel: int, step: int) -> np.ndarray:
        """float64 probabilities of the symbols ``low..high`` of ``channel`` at ``step``."""
        return _probabilities(self, channel, step)

    def bits(self, symbols: np.ndarray, step: int) -> float:
        """Ideal code length in bits of ``symbols`` (C, ...): what the range coder approaches."""
        low, _ = self.symbol_range(step)
        total = 0.0
        for channel in range(self.channels):
            probabilities = self.probabilities(channel, step)
            picked = probabilities[np.ravel(symbols[channel]) - low[channel]]
            total -= float(np.log2(picked).sum())
        return total

    # -- files ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": ENTROPY_FORMAT,
            "fine_per_unit": FINE_PER_UNIT,
            "sha256": self.sha256,
            "id": self.id,
            "channels": self.channels,
            "units_f32": _encode_array(self.units, "<f4"),
            "units": [float(u) for u in self.units],
            "lows": [int(low) for low in self.lows],
            "counts_u32": [_encode_array(c, "<u4") for c in self.counts],
            "fitted_on": self.fitted_on,
            "note": "integer tables; see latentz.codec.entropy and docs/latentz-format.md",
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EntropyModel:
        try:
            if data.get("format") != ENTROPY_FORMAT or data.get("fine_per_unit") != FINE_PER_UNIT:
                raise EntropyModelError(
                    f"unsupported entropy model (format {data.get('format')}, fine_per_unit "
                    f"{data.get('fine_per_unit')}); this latentz reads format {ENTROPY_FORMAT}"
                )
            units = _decode_array(data["units_f32"], "<f4").astype(np.float32)
            lows = np.asarray(data["lows"], dtype=np.int64)
            counts = tuple(_decode_array(text, "<u4").astype(np.int64) for text in data["counts_u32"])
            model = cls(units=units, lows=lows, counts=counts, fitted_on=dict(data.get("fitted_on", {})))
        except EntropyModelError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise EntropyModelError(f"malformed entropy model: {error}") from None
        if data.get("sha256") not in (None, model.sha256):
            raise EntropyModelError("entropy model tables do not match their recorded sha256 (corrupt file)")
        return model

    def save(self, path: str | Path) -> None:
        from latentz.bundle import atomic_write_json

        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> EntropyModel:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise EntropyModelError(f"{path}: no entropy model (run `latentz export MODEL`)") from None
        except (OSError, ValueError) as error:
            raise EntropyModelError(f"{path}: unreadable entropy model ({error})") from None
        if not isinstance(data, dict):
            raise EntropyModelError(f"{path}: an entropy model must be a JSON object")
        return cls.from_json(data)


@lru_cache(maxsize=4096)
def _probabilities(model: EntropyModel, channel: int, step: int) -> np.ndarray:
    """Sum fine counts into the coarse bins of ``step`` with integers; divide once."""
    counts = model.counts[channel]
    fine = model.lows[channel] + np.arange(len(counts), dtype=np.int64)
    coarse = (2 * fine + step) // (2 * step)
    sums = np.zeros(int(coarse[-1] - coarse[0]) + 1, dtype=np.int64)
    np.add.at(sums, coarse - coarse[0], counts)
    probabilities = sums.astype(np.float64) / float(sums.sum())
    probabilities.setflags(write=False)
    return probabilities


def _smoothing_kernel(spread_fine: float, count: int) -> np.ndarray:
    """Gaussian kernel (in fine bins) with Silverman's bandwidth ``1.06 * std * n^(-1/5)``.

    The histogram estimates a density from finitely many training images; smoothing it lets test
    images land on values training never hit. The bandwidth shrinks with the channel's spread, so
    a channel the model does not use stays concentrated in one symbol and costs almost nothing.
    """
    bandwidth = 1.06 * spread_fine * count ** (-0.2)
    if bandwidth < 0.5:  # narrower than one fine bin: smoothing would change nothing
        return np.ones(1)
    radius = int(np.ceil(3 * bandwidth))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / bandwidth) ** 2)
    return kernel / kernel.sum()


def fit(means: np.ndarray, stds: np.ndarray, fitted_on: dict[str, Any] | None = None) -> EntropyModel:
    """Fit an entropy model to posterior means and stds shaped ``(N, C, ...)`` (training images).

    Units are the channels' mean posterior std; inactive channels (std near 1, mean near 0) get
    nearly all their mass in one symbol and so cost almost nothing.
    """
    means = np.asarray(means, dtype=np.float64)
    stds = np.asarray(stds, dtype=np.float64)
    if means.shape != stds.shape or means.ndim < 2 or means.shape[0] < 1:
        raise ValueError(f"means and stds must share a shape (N, C, ...), got {means.shape}, {stds.shape}")
    if not (np.all(np.isfinite(means)) and np.all(np.isfinite(stds))):
        raise ValueError("posterior means and stds must be finite to fit an entropy model")
    channels = means.shape[1]
    per_channel = np.moveaxis(means, 1, 0).reshape(channels, -1)
    units = np.moveaxis(stds, 1, 0).reshape(channels, -1).mean(axis=1).astype(np.float32)
    units = np.maximum(units, np.float32(1e-6))
    lows, counts = [], []
    for channel in range(channels):
        scaled_values = per_channel[channel] * FINE_PER_UNIT / float(units[channel])
        fine = np.floor(scaled_values + 0.5).astype(np.int64)
        kernel = _smoothing_kernel(float(scaled_values.std()), len(scaled_values))
        radius = len(kernel) // 2
        low, high = int(fine.min()), int(fine.max())
        margin = max(4 * FINE_PER_UNIT, (high - low) // 4) + radius
        low, high = low - margin, high + margin
        histogram = np.bincount(fine - low, minlength=high - low + 1).astype(np.float64)
        smoothed = np.convolve(histogram, kernel, mode="same")
        scaled = np.floor(smoothed / smoothed.sum() * TOTAL).astype(np.int64) + 1
        lows.append(low)
        counts.append(scaled)
    info = {"n": int(means.shape[0]), "values_per_channel": int(per_channel.shape[1])}
    info.update(fitted_on or {})
    return EntropyModel(
        units=units, lows=np.asarray(lows, dtype=np.int64), counts=tuple(counts), fitted_on=info
    )


# -- range coding ---------------------------------------------------------------------------------
def encode_symbols(model: EntropyModel, symbols: np.ndarray, step: int) -> bytes:
    """Range-code symbols ``(C, ...)`` channel by channel into the shortest payload that decodes.

    The decoder pads a payload with zero bytes to whole 32-bit words, so any byte string whose
    zero-padded value lies in the coder's final interval decodes to the same symbols. The coder
    itself flushes whole words; `_shortest_payload` finds the shortest such string instead
    (optimal termination), which saves 2 to 3 bytes per file: a tenth of a digit's .latentz file.
    """
    import constriction

    symbols = np.asarray(symbols, dtype=np.int64)
    model._check_channels(symbols)
    low, high = model.symbol_range(step)
    encoder = constriction.stream.queue.RangeEncoder()
    for channel in range(model.channels):
        values = np.ravel(symbols[channel])
        if values.size and (values.min() < low[channel] or values.max() > high[channel]):
            raise ValueError(f"channel {channel}: symbols outside the model's range; quantise() clamps them")
        if low[channel] == high[channel]:
            continue  # a one-symbol alphabet carries no information: nothing is coded
        categorical = constriction.stream.model.Categorical(model.probabilities(channel, step), perfect=False)
        encoder.encode((values - low[channel]).astype(np.int32), categorical)
    full = encoder.get_compressed().astype(">u4").tobytes()

    def decodes_right(candidate: bytes) -> bool:
        try:
            return np.array_equal(decode_symbols(model, candidate, symbols.shape, step), symbols)
        except ValueError:
            return False

    return _shortest_payload(full, decodes_right)


def _shortest_payload(full: bytes, decodes_right: Callable[[bytes], bool]) -> bytes:
    """The shortest prefix of ``full``, rounded down or up in its last byte, that still decodes.

    The values that decode right form one interval containing ``full``. Among strings of length k
    only the two neighbours of ``full`` truncated to k bytes can fall in it, and if no string of
    length k does, no shorter one can (shorter strings are length-k strings ending in zeros).
    """
    best = full.rstrip(b"\0")
    for length in range(len(best) - 1, -1, -1):
        prefix = full[:length]
        bumped = _increment(prefix)
        for candidate in (prefix, bumped):
            if candidate is not None and decodes_right(candidate):
                best = candidate.rstrip(b"\0")
                break
        else:
            return best
    return best


def _increment(data: bytes) -> bytes | None:
    """``data`` + 1 as a big-endian number of the same length, or None when it would overflow."""
    if not data:
        return None
    value = int.from_bytes(data, "big") + 1
    if value >= 1 << (8 * len(data)):
        return None
    return value.to_bytes(len(data), "big")


def decode_symbols(model: EntropyModel, payload: bytes, shape: tuple[int, ...], step: int) -> np.ndarray:
    """Inverse of `encode_symbols`: symbols shaped ``shape`` = (C, ...).

    Payloads may end anywhere: missing bytes of the last 32-bit word are zeros.
    """
    import constriction

    if not shape or shape[0] != model.channels:
        raise ValueError(f"latent shape {shape} does not start with the model's {model.channels} channels")
    padded = payload + b"\0" * (-len(payload) % 4)
    words = np.frombuffer(padded, dtype=">u4").astype(np.uint32)
    decoder = constriction.stream.queue.RangeDecoder(words)
    low, high = model.symbol_range(step)
    per_channel = int(np.prod(shape[1:], dtype=np.int64))
    out = np.empty((model.channels, per_channel), dtype=np.int64)
    for channel in range(model.channels):
        if low[channel] == high[channel]:
            out[channel] = low[channel]  # nothing was coded for a one-symbol alphabet
            continue
        categorical = constriction.stream.model.Categorical(model.probabilities(channel, step), perfect=False)
        try:
            decoded = decoder.decode(categorical, per_channel)
        except (AssertionError, RuntimeError, ValueError) as error:  # constriction's "invalid data"
            raise ValueError(f"the range-coded payload is invalid for this entropy model ({error})") from None
        out[channel] = decoded.astype(np.int64) + low[channel]
    return out.reshape(shape)
