"""Typed configurations, saved as JSON beside the weights they describe.

A bundle folder is self-describing: ``config.json`` holds a :class:`ModelConfig`, so any tool
(torch or not) knows the image size, channels and latent shape without reading weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

Arch = Literal["conv", "mlp", "spatial"]
Likelihood = Literal["bernoulli", "gaussian", "gaussian-learned", "laplace"]

ARCHS: tuple[str, ...] = ("conv", "mlp", "spatial")
LIKELIHOODS: tuple[str, ...] = ("bernoulli", "gaussian", "gaussian-learned", "laplace")
LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant")


class ConfigError(ValueError):
    """A configuration that cannot describe a working model or run."""


@dataclass
class ModelConfig:
    """Everything needed to rebuild a VAE's architecture; no shape is hard-coded elsewhere.

    ``widths`` are the channel counts of the stride-2 convolution stages (conv, spatial) or the
    hidden layer sizes (mlp). A conv model needs ``image_size`` divisible by ``2 ** len(widths)``.
    A spatial model is fully convolutional: its latent is ``latent_dim`` channels on a grid of one
    cell per ``2 ** len(widths)`` pixels, so it takes any image size; ``image_size`` is the size it
    trains and validates on (divisible likewise), and ``hidden`` is unused.
    ``scale`` is the fixed standard deviation (gaussian) or diversity (laplace) of the pixel
    likelihood, in pixel units where 1.0 spans black to white; ignored by bernoulli, and only the
    initial value for gaussian-learned.
    """

    arch: Arch = "conv"
    image_size: int = 28
    channels: int = 1
    latent_dim: int = 10
    widths: list[int] = field(default_factory=lambda: [32, 64])
    hidden: int = 256
    likelihood: Likelihood = "bernoulli"
    scale: float = 0.1

    def __post_init__(self) -> None:
        self.widths = [int(w) for w in self.widths]
        self.validate()

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if self.latent_dim < 1:
            raise ConfigError(f"latent_dim must be positive, got {self.latent_dim}")
        if not self.widths or min(self.widths) < 1:
            raise ConfigError(f"widths must be a non-empty list of positive ints, got {self.widths}")
        if self.image_size < 4:
            raise ConfigError(f"image_size must be at least 4, got {self.image_size}")
        if self.arch in ("conv", "spatial"):
            factor = 2 ** len(self.widths)
            if self.image_size % factor:
                raise ConfigError(
                    f"a {self.arch} model with {len(self.widths)} stride-2 stages needs image_size "
                    f"divisible by {factor}; got {self.image_size}. Use fewer widths or another size."
                )
        if self.likelihood != "bernoulli" and self.scale <= 0:
            raise ConfigError(f"scale must be positive, got {self.scale}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width): the NCHW shape of one image, as the networks see it."""
        return (self.channels, self.image_size, self.image_size)

    @property
    def num_pixels(self) -> int:
        return self.channels * self.image_size * self.image_size

    @property
    def downsampling(self) -> int:
        """How many pixels of each side one latent position covers (spatial models), else 1."""
        return 2 ** len(self.widths) if self.arch == "spatial" else 1

    @property
    def fully_convolutional(self) -> bool:
        """True when the model takes any image size and its latent grows with the image."""
        return self.arch == "spatial"

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        """Shape of one image's latent: ``(latent_dim,)``, or ``(latent_dim, h, w)`` for a spatial
        model, where ``h, w`` are the image's sides divided by `downsampling`, rounded up (the
        runtime pads images to whole latent cells)."""
        if not self.fully_convolutional:
            return (self.latent_dim,)
        height = height or self.image_size
        width = width or self.image_size
        factor = self.downsampling
        return (self.latent_dim, -(-height // factor), -(-width // factor))


@dataclass
class TrainConfig:
    """One training run. Saved as ``train_config.json`` in the run folder and in the bundle.

    ``beta`` multiplies the KL term: 1.0 is the true ELBO (a proper likelihood bound, what
    ``latentz eval`` reports); below 1 trades sample quality for sharper reconstructions, above 1
    pushes towards a smoother, more disentangled latent. ``kl_warmup_epochs`` ramps the KL weight
    linearly from 0 to ``beta`` over that many epochs, which keeps latent units from collapsing
    early; reported metrics always use the full, unweighted ELBO.

    ``lr_schedule`` "cosine" decays the learning rate along a half cosine from ``lr`` to ``lr / 10``
    over the run (usually a slightly better final ELBO); "constant" keeps it fixed, which is what
    lets a finished run be extended with more epochs later. ``max_train_images`` caps the number
    of training images (quick experiments, tests), and the validation images in proportion;
    None uses the whole data set. ``crop_size`` trains a fully convolutional (spatial) model on a
    random ``crop_size`` square of each image: the weights do not depend on the image size, so
    small crops give the same filters at a fraction of the cost per step. Validation always uses
    whole images.
    """

    data: str = "mnist"
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    val_fraction: float = 0.1
    seed: int = 0
    augment: bool = False
    max_train_images: int | None = None
    lr_schedule: str = "cosine"
    crop_size: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = from_dict(ModelConfig, self.model)
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if not (0 < self.lr < math.inf):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr}")
        if not (0 <= self.beta < math.inf):
            raise ConfigError(f"beta must be non-negative, got {self.beta}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.kl_warmup_epochs < 0:
            raise ConfigError(f"kl_warmup_epochs must be non-negative, got {self.kl_warmup_epochs}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.max_train_images is not None and self.max_train_images < 2:
            raise ConfigError(f"max_train_images must be at least 2, got {self.max_train_images}")
        if self.crop_size is not None:
            self._check_crop_size()

    def _check_crop_size(self) -> None:
        model, size = self.model, self.crop_size
        if not model.fully_convolutional:
            raise ConfigError(
                f"crop_size needs a fully convolutional model (arch spatial); a {model.arch} model has "
                f"a fixed input size"
            )
        if size is None or not model.downsampling <= size <= model.image_size or size % model.downsampling:
            raise ConfigError(
                f"crop_size must be a multiple of {model.downsampling} (one latent cell) between "
                f"{model.downsampling} and image_size {model.image_size}, got {size}"
            )


@dataclass(frozen=True)
class HyperpriorConfig:
    """Sizes of the rate-distortion photo codec (`latentz.hyperprior`, codec v2).

    ``widths`` are the hidden stages of g_a (and, reversed, g_s); one more stride-2 stage makes
    ``latent_channels``, so a latent cell is ``2 ** (len(widths) + 1)`` pixels. ``lambdas`` are the
    trained rate-distortion trade-offs (one gain level each), lowest rate first.
    """

    widths: tuple[int, ...] = (64, 64, 64)
    latent_channels: int = 96
    hyper_channels: int = 64
    hyper_latent_channels: int = 32
    activation: str = "gdn"  # "leaky" (LeakyReLU) or "gdn" (GDN / inverse GDN)
    upsample: str = "shuffle"  # "shuffle" (3x3 conv + pixel shuffle) or "deconv" (4x4 transposed)
    lambdas: tuple[float, ...] = (0.013,)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "lambdas", tuple(float(v) for v in self.lambdas))
        if not self.widths or min(self.widths) < 1:
            raise ConfigError(f"widths must be a non-empty list of positive ints, got {list(self.widths)}")
        if min(self.latent_channels, self.hyper_channels, self.hyper_latent_channels) < 1:
            raise ConfigError("latent, hyper and hyper-latent channel counts must be positive")
        if self.activation not in ("gdn", "leaky"):
            raise ConfigError(f"activation must be gdn or leaky, got {self.activation!r}")
        if self.upsample not in ("shuffle", "deconv"):
            raise ConfigError(f"upsample must be shuffle or deconv, got {self.upsample!r}")
        if not self.lambdas or list(self.lambdas) != sorted(set(self.lambdas)) or self.lambdas[0] <= 0:
            raise ConfigError(f"lambdas must be positive and strictly increasing, got {list(self.lambdas)}")

    @property
    def cell(self) -> int:
        """Pixels per side of one latent cell; the hyper-latent's cell is four times that."""
        return 2 ** (len(self.widths) + 1)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> HyperpriorConfig:
        return from_dict(cls, dict(data))


@dataclass
class CodecTrainConfig:
    """One rate-distortion training run of the photo codec (`latentz train`'s photo recipe).

    An epoch is one random ``crop_size`` crop (flipped half the time) of every training photo at
    its own size, ``batch_size`` crops per step, each at a trained λ drawn at random. The learning
    rate follows a cosine from ``lr`` to ``lr / 20`` over the epochs before the last
    ``integer_epochs``, which fine-tune with the integer hyper-decoder simulated. ``kind`` tells a
    saved ``train_config.json`` from a VAE's. ``init_from`` names a codec bundle of the same sizes
    whose weights start the run (a warm start: more training for a finished bundle, on a new
    learning-rate cosine).
    """

    data: str = "folder:photos"
    model: HyperpriorConfig = field(default_factory=HyperpriorConfig)
    kind: str = "hyperprior"
    epochs: int = 300
    batch_size: int = 4
    crop_size: int = 64
    lr: float = 1e-3
    integer_epochs: int | None = None  # None: the last 5% of the epochs
    val_fraction: float = 0.1
    seed: int = 0
    max_train_images: int | None = None
    init_from: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = from_dict(HyperpriorConfig, self.model)
        if self.kind != "hyperprior":
            raise ConfigError(f"kind must be hyperprior, got {self.kind!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(
                f"epochs and batch_size must be at least 1, got {self.epochs}, {self.batch_size}"
            )
        if self.integer_epochs is None:
            self.integer_epochs = max(self.epochs // 20, 1 if self.epochs > 1 else 0)
        if not 0 <= self.integer_epochs < self.epochs:
            raise ConfigError(f"integer_epochs must be between 0 and epochs - 1, got {self.integer_epochs}")
        if not (0 < self.lr < math.inf):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        hyper_cell = 4 * self.model.cell
        if self.crop_size < hyper_cell or self.crop_size % hyper_cell:
            raise ConfigError(
                f"crop_size must be a multiple of {hyper_cell} (one hyper-latent cell), got {self.crop_size}"
            )
        if self.max_train_images is not None and self.max_train_images < 2:
            raise ConfigError(f"max_train_images must be at least 2, got {self.max_train_images}")


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a dataclass from a dict, refusing unknown keys so typos do not pass silently."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    return cls(**data)


def to_dict(config: Any) -> dict[str, Any]:
    return asdict(config)


def save_json(config: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(config), indent=2) + "\n")


def load_model_config(path: str | Path) -> ModelConfig:
    return from_dict(ModelConfig, json.loads(Path(path).read_text()))


def load_train_config(path: str | Path) -> TrainConfig:
    return from_dict(TrainConfig, json.loads(Path(path).read_text()))


def replace(config: T, **changes: Any) -> T:
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]
