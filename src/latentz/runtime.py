"""Inference on a bundle with ONNX Runtime, numpy and Pillow only: what receivers and servers run.

Importing this module, encoding and decoding never import torch. A `ModelRuntime` loads its ONNX
sessions lazily and once: a receiver that holds only ``decoder.onnx`` can still decompress, and
a server shares one runtime per model across threads (ONNX Runtime's ``run`` is thread-safe).

Images are uint8 ``(H, W, C)`` (or ``(N, H, W, C)``); latents float32 ``(N, *latent_shape)``.
Fixed-size models see images resized so the short side fits and centre-cropped, never squashed;
a fully convolutional (spatial) model takes the image as it is, padded at the right and bottom to
whole latent cells, and its output is cropped back.

Sizes follow one policy, `latentz.codec.limits.SizeLimits`: an image is judged from its header
before it is decoded, a spatial model codes at most ``max_coded_pixels`` (bigger images are scaled
down first), and a file's declared size is checked before its payload is entropy-decoded, so no
input costs more memory than the limits allow.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from latentz import codec, imaging
from latentz.bundle import (
    DECODER_FILE,
    ENCODER_FILE,
    ENTROPY_MODEL_FILE,
    HYPERPRIOR_FILE,
    INSTALLED,
    BundleInfo,
    list_bundles,
    read_bundle,
)
from latentz.codec.limits import DEFAULT_LIMITS, SizeLimits, TooLargeError


class ModelRuntimeError(RuntimeError):
    """A bundle that cannot run here, such as one whose ONNX files were never exported."""


class OutOfMemoryError(ModelRuntimeError):
    """ONNX Runtime could not allocate what a network needs for this input (a limit set too high)."""


@dataclass(frozen=True)
class Prepared:
    """An image as the model sees it, and what was done to get there (said to the user)."""

    image: np.ndarray  # uint8 (H, W, C)
    original_size: tuple[int, int]  # (width, height) of the input
    note: str


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    if not path.is_file():
        raise ModelRuntimeError(f"{path} is missing; run `latentz export {path.parent}` to create it")
    ort.set_default_logger_severity(4)  # failures become exceptions with their own message (`_run`)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # No memory arena: a large image's buffers go back to the system after the run instead of
    # staying reserved for the life of the process (a server kept 5.7 GB after one big decode).
    # Measured: the same speed on 28x28 and 128x128 images.
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session: Any, feeds: dict[str, np.ndarray], what: str) -> list[np.ndarray]:
    """``session.run``, with ONNX Runtime's failed allocations turned into a clear error."""
    try:
        return session.run(None, feeds)
    except MemoryError:
        raise OutOfMemoryError(f"not enough memory to run the {what}") from None
    except Exception as error:
        if not any(sign in str(error).lower() for sign in ("bad_alloc", "failed to allocate")):
            raise
        shape = "x".join(map(str, next(iter(feeds.values())).shape))
        raise OutOfMemoryError(
            f"not enough memory to run the {what} on an input of shape {shape}; use a smaller image"
        ) from None


class ModelRuntime:
    """One bundle's encoder, decoder and entropy model, loaded on first use."""

    def __init__(self, info: BundleInfo, threads: int = 1) -> None:
        self.info = info
        self.config = info.config
        self.threads = threads
        self._lock = threading.Lock()
        self._encoder: Any = None
        self._decoder: Any = None
        self._entropy: codec.EntropyModel | None = None

    @classmethod
    def load(cls, model: str | Path, threads: int = 1) -> ModelRuntime:
        info = read_bundle(model)
        kind = _runtime_class(info) if cls is ModelRuntime else cls
        return kind(info, threads=threads)

    # -- identity -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.info.name

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    @property
    def encoder(self) -> Any:
        with self._lock:
            if self._encoder is None:
                self._encoder = _session(self.info.file(ENCODER_FILE), self.threads)
            return self._encoder

    @property
    def decoder(self) -> Any:
        with self._lock:
            if self._decoder is None:
                self._decoder = _session(self.info.file(DECODER_FILE), self.threads)
            return self._decoder

    @property
    def entropy(self) -> codec.EntropyModel:
        with self._lock:
            if self._entropy is None:
                self._entropy = codec.EntropyModel.load(self.info.file(ENTROPY_MODEL_FILE))
            return self._entropy

    def preload(self) -> None:
        """Open every session and table now (a server does it before its first request)."""
        _ = self.encoder, self.decoder, self.entropy

    def blank_file(self) -> bytes:
        """A valid file of a zero latent at the model's size, made without the encoder (warm-ups)."""
        config = self.config
        return codec.encode_latent(
            np.zeros(config.latent_shape(), np.float32),
            entropy=self.entropy,
            step=codec.step_for_quality(75),
            fingerprint=self.fingerprint,
            height=config.image_size,
            width=config.image_size,
            channels=config.channels,
        )

    # -- images ---------------------------------------------------------------------------
    def prepare(
        self, source: str | Path | bytes | Image.Image | np.ndarray, limits: SizeLimits = DEFAULT_LIMITS
    ) -> Prepared:
        """Turn a path, bytes, PIL image or uint8 array into the array this model encodes.

        A spatial model gets an image over ``limits`` scaled down to fit (the note says so).
        """
        config = self.config
        if isinstance(source, np.ndarray):
            array = np.asarray(source)
            if array.dtype != np.uint8 or array.ndim not in (2, 3):
                raise imaging.ImageError(
                    f"expected a uint8 (H, W[, C]) image, got {array.dtype} {array.shape}"
                )
            pil = imaging.to_pil(array)
        elif isinstance(source, Image.Image):
            pil = source
        else:
            pil = imaging.open_image(source, max_pixels=limits.max_image_pixels)
        width, height = pil.size
        if config.fully_convolutional:
            coded = limits.coded_size(width, height)
            if coded != (width, height):
                pil = pil.resize(coded, Image.Resampling.LANCZOS, reducing_gap=3.0)
                note = (
                    f"scaled {width}x{height} down to {coded[0]}x{coded[1]} (the most this model codes "
                    f"here is {limits.describe()}; {limits.raise_with} raises it)"
                )
            else:
                note = f"{width}x{height} encoded at its own size"
            image = imaging.to_array(pil, None, config.channels)
        else:
            image = imaging.to_array(pil, config.image_size, config.channels)
            side = min(width, height)
            if width == height == config.image_size:
                note = f"{width}x{height}, the model's own size"
            elif width == height:
                note = f"resized {width}x{height} to {config.image_size}x{config.image_size}"
            else:
                note = (
                    f"centre-cropped {width}x{height} to {side}x{side} (aspect kept) and resized to "
                    f"{config.image_size}x{config.image_size}, the model's fixed size"
                )
        return Prepared(image=image, original_size=(width, height), note=note)

    def _check_images(self, images: np.ndarray, limits: SizeLimits = DEFAULT_LIMITS) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        config = self.config
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != config.channels:
            raise imaging.ImageError(
                f"{self.name} takes uint8 images with {config.channels} channel(s), got {images.dtype} "
                f"{images.shape}"
            )
        if not config.fully_convolutional and images.shape[1:3] != (config.image_size, config.image_size):
            raise imaging.ImageError(
                f"{self.name} takes {config.image_size}x{config.image_size} images, got "
                f"{images.shape[2]}x{images.shape[1]}; use prepare() to crop and resize"
            )
        if len(images) == 0:
            raise imaging.ImageError("no images given")
        if config.fully_convolutional and not limits.fits(images.shape[2], images.shape[1]):
            raise TooLargeError(
                f"{self.name} codes at most {limits.describe()} at once, got a "
                f"{images.shape[2]}x{images.shape[1]} image; use prepare() to scale it down",
                limits.max_coded_pixels,
            )
        return images

    def _padded(self, images: np.ndarray) -> np.ndarray:
        """Pad height and width up to whole latent cells by repeating the last row and column."""
        factor = self.config.downsampling
        pad_h, pad_w = -images.shape[1] % factor, -images.shape[2] % factor
        if pad_h or pad_w:
            images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        return images

    # -- networks -------------------------------------------------------------------------
    def encode(
        self, images: np.ndarray, limits: SizeLimits = DEFAULT_LIMITS
    ) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images -> posterior mean and log-variance, float32 ``(N, *latent_shape)``."""
        images = self._padded(self._check_images(images, limits))
        mean, logvar = _run(self.encoder, {"image": imaging.to_float_nchw(images)}, f"{self.name} encoder")
        return mean, logvar

    def decode(
        self,
        latents: np.ndarray,
        height: int | None = None,
        width: int | None = None,
        limits: SizeLimits = DEFAULT_LIMITS,
    ) -> np.ndarray:
        """float32 latents ``(N, *latent_shape)`` -> uint8 images ``(N, H, W, C)``.

        ``height``/``width`` crop a spatial model's output back to the original image size.
        """
        latents = np.asarray(latents, dtype=np.float32)
        expected_rank = 4 if self.config.fully_convolutional else 2
        if latents.ndim == expected_rank - 1:
            latents = latents[None]
        if latents.ndim != expected_rank or latents.shape[1] != self.config.latent_dim:
            raise ValueError(
                f"{self.name} decodes latents shaped (N, {', '.join(map(str, self.config.latent_shape()))}), "
                f"got {latents.shape}"
            )
        if not np.all(np.isfinite(latents)):
            raise ValueError("latents must be finite numbers (got NaN or infinity)")
        if self.config.fully_convolutional:
            factor = self.config.downsampling
            side_h, side_w = latents.shape[2] * factor, latents.shape[3] * factor
            if not limits.fits(side_w, side_h):
                raise TooLargeError(
                    f"{self.name} decodes at most {limits.describe()} at once; latents of shape "
                    f"{latents.shape[1:]} make a {side_w}x{side_h} image",
                    limits.max_coded_pixels,
                )
        (images,) = _run(self.decoder, {"latent": np.ascontiguousarray(latents)}, f"{self.name} decoder")
        out = imaging.to_uint8_nhwc(images)
        if height is not None and width is not None:
            out = out[:, :height, :width]
        return np.ascontiguousarray(out)

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """Encode then decode the posterior mean (no quantisation)."""
        images = self._check_images(images)
        mean, _ = self.encode(images)
        return self.decode(mean, images.shape[1], images.shape[2])

    # -- the codec ------------------------------------------------------------------------
    def compress(self, image: np.ndarray, quality: int | None = None, step: float | None = None) -> bytes:
        """One uint8 image (at the model's size, see `prepare`) -> the bytes of a .latentz file.

        Give ``quality`` (0..100, higher is better) or ``step`` (in posterior stds), not both;
        neither means quality 75.
        """
        if quality is not None and step is not None:
            raise ValueError("give either quality or step, not both")
        fine_step = (
            codec.step_from_units(step)
            if step is not None
            else codec.step_for_quality(75 if quality is None else quality)
        )
        images = self._check_images(image)
        if len(images) != 1:
            raise ValueError("compress takes one image at a time")
        mean, _ = self.encode(images)
        return codec.encode_latent(
            mean[0],
            entropy=self.entropy,
            step=fine_step,
            fingerprint=self.fingerprint,
            height=images.shape[1],
            width=images.shape[2],
            channels=images.shape[3],
        )

    def check_header(self, header: codec.Header, limits: SizeLimits = DEFAULT_LIMITS) -> None:
        """Every check of a file's header against this model and the size limits, from the header
        alone: nothing the file declares is allocated before this passes."""
        try:
            codec.check_model(
                header, fingerprint=self.fingerprint, entropy=self.entropy, model_name=self.name
            )
        except codec.ModelMismatchError as error:
            raise codec.ModelMismatchError(f"{error}{_installed_maker(header, self)}") from None
        config = self.config
        limits.check_declared(
            header,
            fully_convolutional=config.fully_convolutional,
            image_size=config.image_size,
            model_name=self.name,
        )
        expected = config.latent_shape(header.height, header.width)
        if header.channels != config.channels or header.latent_shape != expected:
            raise codec.ModelMismatchError(
                f"the file holds a {header.width}x{header.height}x{header.channels} image with latent "
                f"{header.latent_shape}, which {self.name} cannot produce (it expects latent {expected})"
            )

    def read(self, data: bytes, limits: SizeLimits = DEFAULT_LIMITS) -> tuple[codec.Header, np.ndarray]:
        """A .latentz file's header and dequantised latent, after every check against this model."""
        return self.read_parsed(*codec.unpack(data), limits)

    def read_parsed(
        self, header: codec.Header, payload: bytes, limits: SizeLimits = DEFAULT_LIMITS
    ) -> tuple[codec.Header, np.ndarray]:
        """`read` for a file already unpacked (by whoever found its model from the header)."""
        self.check_header(header, limits)
        return header, codec.decode_payload(header, payload, entropy=self.entropy)

    def decompress(self, data: bytes, limits: SizeLimits = DEFAULT_LIMITS) -> np.ndarray:
        """The bytes of a .latentz file -> the uint8 ``(H, W, C)`` image."""
        return self.decompress_parsed(*codec.unpack(data), limits)

    def decompress_parsed(
        self, header: codec.Header, payload: bytes, limits: SizeLimits = DEFAULT_LIMITS
    ) -> np.ndarray:
        """`decompress` for a file already unpacked: a decode unpacks its file once."""
        header, latent = self.read_parsed(header, payload, limits)
        return self.decode(latent[None], header.height, header.width, limits)[0]


def _runtime_class(info: BundleInfo) -> type[ModelRuntime]:
    """`ModelRuntime`, or for a rate-distortion bundle (format v2) `latentz.hyper_runtime`'s."""
    if info.file(HYPERPRIOR_FILE).is_file():
        from latentz.hyper_runtime import HyperpriorRuntime

        return HyperpriorRuntime
    return ModelRuntime


_RUNTIMES: dict[tuple[Path, str, int], ModelRuntime] = {}
"""The one runtime cache of the process (the CLI's and the server's): by bundle folder, fingerprint
and thread count, so a bundle re-exported under the same name gets fresh sessions."""
_RUNTIMES_LOCK = threading.Lock()


def runtime_for(info: BundleInfo, threads: int = 1) -> ModelRuntime:
    """The shared runtime of a bundle already read (one ONNX session each, loaded once per process)."""
    folder = info.path.resolve()
    key = (folder, info.fingerprint, threads)
    with _RUNTIMES_LOCK:
        runtime = _RUNTIMES.get(key)
        if runtime is None:
            for stale in [k for k in _RUNTIMES if k[0] == folder and k[2] == threads]:
                del _RUNTIMES[stale]  # the same folder holds another model now
            runtime = _RUNTIMES[key] = _runtime_class(info)(info, threads=threads)
        return runtime


def load(model: str | Path, threads: int = 1) -> ModelRuntime:
    """A shared runtime per bundle name or folder (see `runtime_for`)."""
    return runtime_for(read_bundle(model), threads)


def _installed_maker(header: codec.Header, refused_by: ModelRuntime) -> str:
    """' (that is NAME, installed here)' when another installed bundle made the file, else '': the
    user then knows which -m to pass."""
    info = INSTALLED.by_fingerprint(header.fingerprint)
    return f" (that is {info.name}, installed here)" if info and info.path != refused_by.info.path else ""


def model_for_header(header: codec.Header) -> ModelRuntime:
    """The installed model that made a .latentz file, found by the fingerprint in its header."""
    info = INSTALLED.by_fingerprint(header.fingerprint)
    if info is None:
        installed = ", ".join(path.name for path in list_bundles()) or "none"
        raise codec.ModelMismatchError(
            f"no installed model has fingerprint {header.fingerprint_hex} (installed: {installed}); "
            f"pass the model that encoded the file with -m MODEL"
        )
    return runtime_for(info)


def model_for_file(data: bytes) -> ModelRuntime:
    """`model_for_header` of a file's bytes."""
    return model_for_header(codec.unpack(data)[0])
