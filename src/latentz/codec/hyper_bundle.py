"""What a receiver of a version-2 file holds besides ``decoder.onnx``: the integer tables of the
hyper-latent and of the Gaussians, the integer hyper-decoder and the gain offsets of every quality
row, in one ``hyperprior.safetensors`` file of integer arrays (plus the float32 mean scales).

`HyperpriorCoder` turns the analysis transform's output (``y``, ``z``) and a quality into a payload
and back into ``ŷ``; every probability the range coder uses comes from integers in this file, so
a payload decodes to the same symbols on every machine. Torch-free (numpy, safetensors, constriction).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentz.codec import hyper, planar, rates
from latentz.codec.format import VERSION_HYPERPRIOR, VERSION_PLANAR
from latentz.codec.integer_network import HyperCodecError, IntegerHyperDecoder

#: The hyper-latent has one cell per 4x4 latent cells (two stride-2 stages in h_a).
HYPER_UPSAMPLING = 4


def _narrow(array: np.ndarray) -> np.ndarray:
    """Integers in the smallest of int8/int16/int32 that holds them (the file is shipped); loading
    widens them to int64 again. Floats (the mean scales) stay as they are."""
    if not np.issubdtype(array.dtype, np.integer):
        return array
    for kind in (np.int8, np.int16, np.int32):
        info = np.iinfo(kind)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            return array.astype(kind)
    return array


def _widen(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.int64) if np.issubdtype(v.dtype, np.integer) else v for k, v in arrays.items()}


@dataclass(frozen=True, eq=False)
class HyperpriorCoder:
    """The integer half of a hyperprior bundle. ``levels`` (rows, M) are the gain offsets of the
    quality rows, from the coarsest (quality 0) to the finest (quality 100)."""

    z_tables: hyper.IntegerTables
    gaussian: hyper.IntegerTables
    hyper_decoder: IntegerHyperDecoder
    levels: np.ndarray
    sha256: str = ""

    @property
    def latent_channels(self) -> int:
        return self.hyper_decoder.latent_channels

    @property
    def entropy_id(self) -> int:
        """The byte a v2 file carries to say which tables it was coded with."""
        return int(self.sha256[:2], 16)

    def z_shape(self, latent_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        _, height, width = latent_shape
        return (self.z_tables.count, -(-height // HYPER_UPSAMPLING), -(-width // HYPER_UPSAMPLING))

    def offsets(self, quality: int) -> np.ndarray:
        return hyper.gain_offsets_for_quality(self.levels, quality)

    def encode(self, y: np.ndarray, z: np.ndarray, quality: int, penalty: np.ndarray | None = None) -> bytes:
        """``y`` float (M, h, w) and the rounded hyper-latent ``z`` int (Cz, hz, wz) -> the payload.

        With ``penalty`` (M,), the bits a squared symbol-unit error costs in each channel, symbols
        are chosen by `rates.quantize_rd`; without, by plain rounding. Either decodes the same way.
        """
        offsets = self.offsets(quality)
        raw, mean = self.hyper_decoder(z, y.shape[1:])
        steps = hyper.step_sizes(offsets)
        indices = hyper.scale_indices(raw, offsets)
        if penalty is None:
            symbols = hyper.quantize(y, mean, steps)
        else:
            symbols = rates.quantize_rd(y, mean, steps, indices, self.gaussian, penalty)
        return hyper.encode_latents(z, symbols, indices, self.z_tables, self.gaussian)

    def encode_smallest(
        self, y: np.ndarray, z: np.ndarray, quality: int, penalty: np.ndarray | None = None
    ) -> tuple[int, bytes]:
        """(format version, payload) of the shorter coding of ``y`` at ``quality``: the hyperprior
        payload (version 2, symbols chosen as `encode` chooses them) or, for a latent that is flat
        or a plane, the planar one (version 3, `latentz.codec.planar`), which is tried only when
        its estimate beats the hyperprior's."""
        payload = self.encode(y, z, quality, penalty)
        symbols = hyper.quantize(y, np.zeros(y.shape, np.float32), hyper.step_sizes(self.offsets(quality)))
        residual = planar.residuals(symbols)
        if planar.entropy_bound_bits(residual) / 8 >= len(payload):
            return VERSION_HYPERPRIOR, payload  # a photo: planar coding cannot win
        table, bits = planar.estimated_bits(residual, self.gaussian)
        if bits / 8 + 1 >= len(payload):
            return VERSION_HYPERPRIOR, payload
        flat = planar.encode(symbols, self.gaussian, table)
        return (VERSION_PLANAR, flat) if len(flat) < len(payload) else (VERSION_HYPERPRIOR, payload)

    def decode_symbols(
        self, payload: bytes, latent_shape: tuple[int, int, int], quality: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The payload -> (ẑ, the symbols of y, the predicted mean μ): all integers but μ."""
        offsets = self.offsets(quality)
        means: list[np.ndarray] = []

        def indices_for(z_hat: np.ndarray) -> np.ndarray:
            raw, mean = self.hyper_decoder(z_hat, latent_shape[1:])
            means.append(mean)
            return hyper.scale_indices(raw, offsets)

        z, symbols = hyper.decode_latents(
            payload, self.z_shape(latent_shape), latent_shape, self.z_tables, self.gaussian, indices_for
        )
        return z, symbols, means[0]

    def file_symbols(
        self, payload: bytes, latent_shape: tuple[int, int, int], quality: int, version: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ẑ, the symbols of y) a file carries; a planar (version 3) file has no ẑ (an empty array)."""
        z, symbols, _ = self._read(payload, latent_shape, quality, version)
        return z, symbols

    def decode(
        self,
        payload: bytes,
        latent_shape: tuple[int, int, int],
        quality: int,
        version: int = VERSION_HYPERPRIOR,
    ) -> np.ndarray:
        """The payload of a file with this latent shape, quality and format version -> ŷ float32 (M, h, w)."""
        _, symbols, mean = self._read(payload, latent_shape, quality, version)
        return hyper.dequantize(symbols, mean, hyper.step_sizes(self.offsets(quality)))

    def _read(
        self, payload: bytes, latent_shape: tuple[int, int, int], quality: int, version: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ẑ, symbols, μ) of either payload: a planar one has no ẑ and a zero mean."""
        if version == VERSION_PLANAR:
            symbols = planar.decode(payload, latent_shape, self.gaussian)
            return np.zeros((0,), np.int64), symbols, np.zeros(latent_shape, np.float32)
        return self.decode_symbols(payload, latent_shape, quality)

    def save(self, path: Path) -> str:
        """Write the file; returns its SHA-256."""
        from safetensors.numpy import save

        arrays = {f"z.{k}": v for k, v in self.z_tables.to_arrays().items()}
        arrays |= {f"gaussian.{k}": v for k, v in self.gaussian.to_arrays().items()}
        arrays |= {f"h_s.{k}": v for k, v in self.hyper_decoder.to_arrays().items()}
        arrays["levels"] = np.asarray(self.levels, dtype=np.int64)
        data = save({k: np.ascontiguousarray(_narrow(v)) for k, v in arrays.items()})
        from latentz.files import atomic_write_bytes

        atomic_write_bytes(path, data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: Path) -> HyperpriorCoder:
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            data = Path(path).read_bytes()
            arrays = _widen(load(data))
        except FileNotFoundError:
            raise HyperCodecError(
                f"{path} is missing; the bundle was not finished by `latentz train`"
            ) from None
        except (SafetensorError, ValueError) as error:
            raise HyperCodecError(f"{path} is not a readable safetensors file ({error})") from None

        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}

        if "levels" not in arrays:
            raise HyperCodecError(f"{path} lacks the gain levels")
        coder = cls(
            z_tables=hyper.IntegerTables.from_arrays(part("z.")),
            gaussian=hyper.IntegerTables.from_arrays(part("gaussian.")),
            hyper_decoder=IntegerHyperDecoder.from_arrays(part("h_s.")),
            levels=np.asarray(arrays["levels"], dtype=np.int64),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        if coder.levels.ndim != 2 or coder.levels.shape[1] != coder.latent_channels:
            raise HyperCodecError(f"{path}: gain levels {coder.levels.shape} do not fit the hyper-decoder")
        return coder
