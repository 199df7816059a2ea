"""The runtime of a rate-distortion (hyperprior) bundle, format versions 2 and 3: numpy, ONNX Runtime
and constriction, no torch. `latentz.runtime.load` and `runtime_for` hand it out for bundles that
carry ``hyperprior.safetensors``."""

from __future__ import annotations

import math

import numpy as np

from latentz import codec
from latentz.bundle import HYPERPRIOR_FILE, BundleInfo
from latentz.codec import hyper
from latentz.codec.hyper_bundle import HyperpriorCoder
from latentz.codec.integer_network import HyperCodecError
from latentz.codec.limits import DEFAULT_LIMITS, SizeLimits
from latentz.runtime import ModelRuntime, ModelRuntimeError, _installed_maker, _run

RD_SLOPE = 4.0
"""The encoder's price of distortion in its rounding choices (`latentz.codec.rates.quantize_rd`),
as a multiple of the trained λ, chosen on 30 training photos at their own size by BD-rate against
plain rounding: -2.38% at 3, -2.63% at 4, -2.62% at 5 (`scripts/rd_rounding_sweep.py`). Plausibly
above 1 because each choice is made alone, while the synthesis transform spreads an element's
error over its neighbours'."""
SENSITIVITY_STEP = 0.5
"""How far (latent units) each channel is moved to measure the synthesis transform's response."""
SENSITIVITY_SPACING = 6
"""Latent cells between two probed elements: wider than the synthesis transform's footprint
(about 4.5 cells for three 3x3 stages), so each probe's pixels are its own."""


class HyperpriorRuntime(ModelRuntime):
    """A rate-distortion (hyperprior) bundle, format versions 2 and 3 (3: the planar payload of
    `latentz.codec.planar`, for flat images).

    ``encoder.onnx`` is g_a then h_a (image -> ``y``, ``z``); ``decoder.onnx`` is g_s (``ŷ`` ->
    image). Between them `HyperpriorCoder` quantises and range-codes with integer tables and the
    integer hyper-decoder, so the symbols are the same on every machine; only ``ŷ``'s mean and the
    pixels are floating point.
    """

    def __init__(self, info: BundleInfo, threads: int = 1) -> None:
        super().__init__(info, threads)
        self._coder: HyperpriorCoder | None = None
        self._sensitivities: np.ndarray | None = None

    @property
    def coder(self) -> HyperpriorCoder:
        with self._lock:
            if self._coder is None:
                try:
                    self._coder = HyperpriorCoder.load(self.info.file(HYPERPRIOR_FILE))
                except HyperCodecError as error:
                    raise ModelRuntimeError(str(error)) from None
            return self._coder

    def preload(self) -> None:
        _ = self.encoder, self.decoder, self.coder, self.sensitivities

    @property
    def sensitivities(self) -> np.ndarray:
        """Per latent channel, the squared pixel error (0..1 scale, summed over the image) that one
        latent unit of change makes, measured once through ``decoder.onnx`` by finite differences
        around the zero latent: channel ``c`` is moved by `SENSITIVITY_STEP` at its own spot of one
        decoded grid. The channels differ a thousandfold, which is why rounding choices need them."""
        if self._sensitivities is None:
            measured = self._measure_sensitivities()  # outside the lock: it runs the decoder, which takes it
            with self._lock:
                if self._sensitivities is None:
                    self._sensitivities = measured
        return self._sensitivities

    def _measure_sensitivities(self) -> np.ndarray:
        channels, spacing, cell = self.config.latent_dim, SENSITIVITY_SPACING, self.config.downsampling
        side = math.ceil(math.sqrt(channels))
        still = np.zeros((1, channels, side * spacing, side * spacing), np.float32)
        moved = still.copy()
        for channel in range(channels):
            row, column = divmod(channel, side)
            centre = (row * spacing + spacing // 2, column * spacing + spacing // 2)
            moved[0, channel, centre[0], centre[1]] = SENSITIVITY_STEP
        (before,) = _run(self.decoder, {"latent": still}, f"{self.name} decoder")
        (after,) = _run(self.decoder, {"latent": moved}, f"{self.name} decoder")
        squared = (after[0].astype(np.float64) - before[0]) ** 2
        block = spacing * cell
        blocks = squared.reshape(squared.shape[0], side, block, side, block).sum(axis=(0, 2, 4))
        return blocks.ravel()[:channels] / SENSITIVITY_STEP**2

    def penalty(self, quality: int) -> np.ndarray:
        """Bits per squared symbol-unit error of each channel at ``quality``, for
        `latentz.codec.rates.quantize_rd`: the training loss ``λ·MSE(0..255) + bits/pixel`` times
        the pixel count prices a squared [0, 1] pixel error at ``λ·255²/3`` bits (three colour
        values a pixel), and one symbol unit of channel ``c`` is ``step_c`` latent units."""
        codec_card = self.info.card.get("codec")
        lambdas = codec_card.get("lambdas") if isinstance(codec_card, dict) else None
        if not (
            isinstance(lambdas, list)
            and lambdas
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in lambdas)
            and all(math.isfinite(v) and v > 0 for v in lambdas)
        ):
            raise ModelRuntimeError(
                f"{self.name}'s card has no usable codec.lambdas (positive numbers, one per trained "
                f"level; got {lambdas!r}); retrain it with `latentz train`"
            )
        steps = hyper.step_sizes(self.coder.offsets(quality))
        price = RD_SLOPE * hyper.lambda_for_quality(lambdas, quality) * 255.0**2 / 3
        return price * self.sensitivities * steps**2

    def blank_file(self) -> bytes:
        size = self.config.image_size
        latent_shape = self.config.latent_shape(size, size)
        z = np.zeros(self.coder.z_shape(latent_shape), np.int64)
        payload = self.coder.encode(np.zeros(latent_shape, np.float32), z, 75)
        return self._pack(codec.VERSION_HYPERPRIOR, payload, 75, size, size, latent_shape)

    def _pack(
        self, version: int, payload: bytes, quality: int, height: int, width: int, latent_shape: tuple
    ) -> bytes:
        header = codec.Header(
            version=version,
            quality=quality,
            fingerprint=bytes.fromhex(self.fingerprint)[: codec.FINGERPRINT_BYTES],
            entropy_id=self.coder.entropy_id,
            height=height,
            width=width,
            channels=3,
            latent_shape=tuple(latent_shape),
        )
        return codec.pack(header, payload)

    def compress(self, image: np.ndarray, quality: int | None = None, step: float | None = None) -> bytes:
        """One uint8 image -> a .latentz file at ``quality`` 0..100 (default 75): version 2, or 3
        where the planar payload is smaller."""
        if step is not None:
            raise codec.CodecSettingError(
                f"{self.name} is a rate-distortion codec: give a quality, not a step"
            )
        quality = 75 if quality is None else quality
        if isinstance(quality, bool) or not isinstance(quality, int | np.integer) or not 0 <= quality <= 100:
            raise codec.CodecSettingError(f"quality must be an integer between 0 and 100, got {quality!r}")
        images = self._check_images(image)
        if len(images) != 1:
            raise ValueError("compress takes one image at a time")
        y, z = self.encode(images)
        z_hat = np.floor(z[0].astype(np.float64) + 0.5).astype(np.int64)
        version, payload = self.coder.encode_smallest(y[0], z_hat, int(quality), self.penalty(int(quality)))
        return self._pack(version, payload, int(quality), images.shape[1], images.shape[2], y.shape[1:])

    def check_header(self, header: codec.Header, limits: SizeLimits = DEFAULT_LIMITS) -> None:
        ours = bytes.fromhex(self.fingerprint)[: codec.FINGERPRINT_BYTES]
        if header.fingerprint != ours:
            raise codec.ModelMismatchError(
                f"this file was made by a model with fingerprint {header.fingerprint_hex}, but {self.name} "
                f"has fingerprint {ours.hex()}; decode it with the model that encoded it"
                f"{_installed_maker(header, self)}"
            )
        if header.version not in codec.RATE_DISTORTION_VERSIONS or header.entropy_id != self.coder.entropy_id:
            raise codec.ModelMismatchError(
                f"the file is format version {header.version} with tables {header.entropy_id:02x}; "
                f"{self.name} reads versions 2 and 3 with tables {self.coder.entropy_id:02x}"
            )
        limits.check_declared(header, fully_convolutional=True, image_size=0, model_name=self.name)
        expected = self.config.latent_shape(header.height, header.width)
        if header.channels != 3 or header.latent_shape != expected:
            raise codec.ModelMismatchError(
                f"the file holds a {header.width}x{header.height}x{header.channels} image with latent "
                f"{header.latent_shape}, which {self.name} cannot produce (it expects latent {expected})"
            )

    def read_parsed(
        self, header: codec.Header, payload: bytes, limits: SizeLimits = DEFAULT_LIMITS
    ) -> tuple[codec.Header, np.ndarray]:
        self.check_header(header, limits)
        try:
            latent = self.coder.decode(payload, header.latent_shape, header.quality, header.version)
        except HyperCodecError as error:
            raise codec.LatentzFormatError(f"corrupt payload: {error}") from None
        return header, latent
