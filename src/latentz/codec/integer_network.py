"""The integer hyper-decoder of the photo codec v2: the path from the decoded hyper-latent ``ẑ`` to
each latent element's probability-table index, in integer arithmetic on integer parameters
(Ballé, Johnston & Minnen 2019), so that every machine picks the same tables. numpy only.

Each convolution is a BLAS matrix product in floating point that is nevertheless exact: every
product and every partial sum is an integer that the float type holds exactly (below 2^24 for
float32, which `IntegerConv.accumulate` uses whenever a bound on the layer's sums allows, else
below 2^53 for float64, see `HYPER_INPUT_MAX`), so BLAS may sum in any order and still give the
same integers. BLAS runs on one thread here: these products are small, and OpenBLAS's worker
threads spin for each one (measured: 14x the CPU time of one thread on the shared 2-core machine).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from threadpoolctl import ThreadpoolController

ACTIVATION_MAX = 255
"""Hidden activations of the integer network are clipped to ``0..255`` (QReLU, 8 bits)."""
WEIGHT_MAX = 127
"""Integer weights are int8: ``-127..127``."""
HYPER_INPUT_MAX = 1 << 15
"""The hyper-decoder refuses ``|ẑ|`` beyond this, which keeps every accumulator below 2^53."""
_EXACT_FLOAT = 1 << 53
_EXACT_FLOAT32 = 1 << 24
_BLAS: ThreadpoolController | None = None


def _one_blas_thread() -> AbstractContextManager[object]:
    """A context that limits BLAS to one thread (the controller is found once, on first use)."""
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


class HyperCodecError(ValueError):
    """Tables or network parameters that are malformed, or a payload that does not decode."""


@dataclass(frozen=True)
class IntegerConv:
    """A 3x3, stride-1, zero-padded convolution on integers, optionally followed by a pixel shuffle.

    ``acc = conv(x, weight) + bias`` exactly; hidden layers then output
    ``clip((acc * multiplier + 2**(shift-1)) >> shift, 0, ACTIVATION_MAX)`` per output channel.
    """

    weight: np.ndarray  # int64 (out, in, 3, 3), |w| <= WEIGHT_MAX
    bias: np.ndarray  # int64 (out,)
    multiplier: np.ndarray  # int64 (out,), 1 .. 2**16 (unused by a final layer's mean channels)
    shift: np.ndarray  # int64 (out,), 1 .. 48
    shuffle: bool  # pixel shuffle by 2 after the convolution (out must be a multiple of 4)

    def __post_init__(self) -> None:
        w, b, m, s = self.weight, self.bias, self.multiplier, self.shift
        if w.ndim != 4 or w.shape[2:] != (3, 3) or not np.issubdtype(w.dtype, np.integer):
            raise HyperCodecError(f"an integer conv weight is int (out, in, 3, 3), got {w.shape} {w.dtype}")
        if np.abs(w).max(initial=0) > WEIGHT_MAX:
            raise HyperCodecError(f"integer weights must lie in -{WEIGHT_MAX}..{WEIGHT_MAX}")
        for name, array in (("bias", b), ("multiplier", m), ("shift", s)):
            if array.shape != (w.shape[0],) or not np.issubdtype(array.dtype, np.integer):
                raise HyperCodecError(f"{name} must hold one integer per output channel")
        if np.abs(b).max(initial=0) >= 1 << 40 or m.min() < 1 or m.max() > 1 << 16:
            raise HyperCodecError("bias or multiplier out of range")
        if s.min() < 1 or s.max() > 48:
            raise HyperCodecError("shifts must lie in 1..48")
        if self.shuffle and w.shape[0] % 4:
            raise HyperCodecError("a pixel-shuffled layer needs a multiple of 4 output channels")

    @cached_property
    def _largest_row_sum(self) -> int:
        """The largest ``sum |w|`` over output channels: with inputs of magnitude at most ``a``, no
        partial sum of any output, in any order, exceeds ``a`` times this."""
        return int(np.abs(self.weight).reshape(self.weight.shape[0], -1).sum(axis=1).max(initial=0))

    @cached_property
    def _matrices(self) -> dict[type, np.ndarray]:
        weight = self.weight.reshape(self.weight.shape[0], -1)
        return {np.float32: weight.astype(np.float32), np.float64: weight.astype(np.float64)}

    def accumulate(self, x: np.ndarray) -> np.ndarray:
        """Exact integer ``conv(x) + bias`` for int64 ``x`` of shape (in, h, w) -> (out, h, w).

        Computed as a float matrix product (BLAS, fast) that is exact: every product and partial
        sum is an integer below 2^24 (float32) or 2^53 (float64), so any summation order gives the
        same value. The bound is checked, not assumed, and picks the type.
        """
        channels, height, width = x.shape
        if channels != self.weight.shape[1]:
            raise HyperCodecError(f"layer expects {self.weight.shape[1]} channels, got {channels}")
        bound = self._largest_row_sum * int(np.abs(x).max(initial=0))
        if bound + int(np.abs(self.bias).max(initial=0)) >= _EXACT_FLOAT:
            raise HyperCodecError("integer layer input too large for exact accumulation")
        dtype = np.float32 if bound < _EXACT_FLOAT32 else np.float64
        padded = np.pad(x.astype(dtype), ((0, 0), (1, 1), (1, 1)))
        columns = np.empty((channels, 9, height, width), dtype=dtype)
        for dy in range(3):
            for dx in range(3):
                columns[:, 3 * dy + dx] = padded[:, dy : dy + height, dx : dx + width]
        with _one_blas_thread():
            acc = self._matrices[dtype] @ columns.reshape(channels * 9, height * width)
        return acc.astype(np.int64).reshape(-1, height, width) + self.bias[:, None, None]

    def requantize(self, acc: np.ndarray, first_channel: int = 0) -> np.ndarray:
        """``round(acc * multiplier / 2**shift)`` per channel, ties upward, in int64; ``acc`` holds
        the output channels from ``first_channel`` on."""
        channels = slice(first_channel, first_channel + len(acc))
        m, s = self.multiplier[channels, None, None], self.shift[channels, None, None]
        return (acc * m + (np.int64(1) << (s - 1))) >> s


def pixel_shuffle(x: np.ndarray) -> np.ndarray:
    """(4C, h, w) -> (C, 2h, 2w) in torch's ``PixelShuffle(2)`` order."""
    channels, height, width = x.shape
    x = x.reshape(channels // 4, 2, 2, height, width)
    return x.transpose(0, 3, 1, 4, 2).reshape(channels // 4, 2 * height, 2 * width)


@dataclass(frozen=True)
class IntegerHyperDecoder:
    """h_s as an integer network: hidden `IntegerConv` layers (QReLU), then a final layer whose
    first half of channels, times ``mean_scales`` (float32), is the mean and whose second half,
    requantised, is the raw scale index ``v``."""

    hidden: tuple[IntegerConv, ...]
    final: IntegerConv
    mean_scales: np.ndarray  # float32 (latent_channels,)

    def __post_init__(self) -> None:
        if self.final.shuffle or self.final.weight.shape[0] != 2 * len(self.mean_scales):
            raise HyperCodecError("the final layer must output a mean and an index per latent channel")
        if self.mean_scales.dtype != np.float32 or not np.all(np.isfinite(self.mean_scales)):
            raise HyperCodecError("mean scales must be finite float32")

    @property
    def latent_channels(self) -> int:
        return len(self.mean_scales)

    @property
    def upsampling(self) -> int:
        return 2 ** sum(layer.shuffle for layer in self.hidden)

    def __call__(self, z: np.ndarray, latent_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``ẑ`` int (Cz, hz, wz) -> (raw scale index int64, mean float32), each (M, h, w) cropped to
        ``latent_size``. Only the mean touches floating point, and it never feeds the coder."""
        x = np.asarray(z)
        if not np.issubdtype(x.dtype, np.integer) or x.ndim != 3:
            raise HyperCodecError("the hyper-decoder takes an integer (channels, h, w) array")
        if np.abs(x).max(initial=0) > HYPER_INPUT_MAX:
            raise HyperCodecError(f"hyper-latent values beyond ±{HYPER_INPUT_MAX}")
        height, width = latent_size
        if not (0 < height <= x.shape[1] * self.upsampling and 0 < width <= x.shape[2] * self.upsampling):
            raise HyperCodecError(f"latent size {latent_size} does not match hyper-latent {x.shape[1:]}")
        x = x.astype(np.int64)
        for layer in self.hidden:
            x = np.clip(layer.requantize(layer.accumulate(x)), 0, ACTIVATION_MAX)
            if layer.shuffle:
                x = pixel_shuffle(x)
        acc = self.final.accumulate(x)[:, :height, :width]
        channels = self.latent_channels
        mean = (
            acc[:channels].astype(np.float64) * self.mean_scales.astype(np.float64)[:, None, None]
        ).astype(np.float32)
        index = self.final.requantize(acc[channels:], first_channel=channels)
        return index, mean

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {"mean_scales": self.mean_scales}
        for name, layer in [*((f"hidden{i}", h) for i, h in enumerate(self.hidden)), ("final", self.final)]:
            for part in ("weight", "bias", "multiplier", "shift"):
                arrays[f"{name}.{part}"] = getattr(layer, part).astype(np.int64)
            arrays[f"{name}.shuffle"] = np.array([int(layer.shuffle)], dtype=np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> IntegerHyperDecoder:
        def layer(name: str) -> IntegerConv:
            parts = {
                part: np.asarray(arrays[f"{name}.{part}"])
                for part in ("weight", "bias", "multiplier", "shift")
            }
            return IntegerConv(**parts, shuffle=bool(int(np.asarray(arrays[f"{name}.shuffle"])[0])))

        try:
            count = sum(1 for key in arrays if key.startswith("hidden") and key.endswith(".weight"))
            return cls(
                hidden=tuple(layer(f"hidden{i}") for i in range(count)),
                final=layer("final"),
                mean_scales=np.asarray(arrays["mean_scales"]),
            )
        except KeyError as error:
            raise HyperCodecError(f"hyper-decoder parameters lack {error}") from None
