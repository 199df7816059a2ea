"""VAE architectures shaped entirely by a ModelConfig: conv and MLP (one global latent vector), and
spatial (fully convolutional; the latent is a feature map that grows with the image).

Images enter as float tensors in [0, 1], shape (N, C, H, W). The encoder returns the mean and
log-variance of a diagonal Gaussian posterior q(z|x); the decoder returns the parameters of the
pixel likelihood p(x|z) (logits for bernoulli, means otherwise). ``decode_mean`` gives the image a
person sees: the likelihood's mean clamped to [0, 1]. The decoders end in a plain linear layer (no
tanh or sigmoid squashing the means), so true black and white stay reachable.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from latentz import files, imaging, objectives
from latentz.bundle import CONFIG_FILE, WEIGHTS_FILE, resolve_bundle
from latentz.config import ModelConfig, load_model_config
from latentz.folder_cache import ImageRows

LOG_2PI = math.log(2 * math.pi)
LEAKY_SLOPE = 0.2
#: Initial posterior log-variance of spatial models (std ~0.22 instead of 1): with unit noise on
#: every latent element the decoder first sees mostly noise and learning stalls for epochs.
SPATIAL_LOGVAR_INIT = -3.0
#: Images per forward pass when encoding a whole data set. Training's bundle and `latentz export`
#: both encode this way, so an export refits exactly the entropy model training wrote.
POSTERIOR_BATCH = 512


class ConvEncoder(nn.Module):
    """Stride-2 4x4 convolutions halve the image per stage; a linear head gives mean and log-var."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = config.channels
        for width in config.widths:
            layers += [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.SiLU()]
            in_channels = width
        self.features = nn.Sequential(*layers, nn.Flatten())
        side = config.image_size // 2 ** len(config.widths)
        self.head = nn.Sequential(
            nn.Linear(in_channels * side * side, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, 2 * config.latent_dim),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.head(self.features(x)).chunk(2, dim=1)
        return mean, logvar


class ConvDecoder(nn.Module):
    """Mirror of the encoder: a linear layer to a small feature map, then stride-2 upsampling."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        widths = list(reversed(config.widths))
        self.side = config.image_size // 2 ** len(widths)
        self.first_width = widths[0]
        self.project = nn.Sequential(
            nn.Linear(config.latent_dim, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, widths[0] * self.side * self.side),
            nn.SiLU(),
        )
        layers: list[nn.Module] = []
        for in_width, out_width in zip(widths, [*widths[1:], widths[-1]], strict=True):
            layers += [nn.ConvTranspose2d(in_width, out_width, 4, stride=2, padding=1), nn.SiLU()]
        layers.append(nn.Conv2d(widths[-1], config.channels, 3, padding=1))
        self.upsample = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        features = self.project(z).view(-1, self.first_width, self.side, self.side)
        return self.upsample(features)


class MlpEncoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        size = config.num_pixels
        for width in config.widths:
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        layers.append(nn.Linear(size, 2 * config.latent_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.net(x).chunk(2, dim=1)
        return mean, logvar


class MlpDecoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = config.latent_dim
        for width in reversed(config.widths):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        layers.append(nn.Linear(size, config.num_pixels))
        self.net = nn.Sequential(*layers)
        self.image_shape = config.image_shape

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.image_shape)


class SpatialEncoder(nn.Module):
    """Analysis transform: one stride-2 3x3 convolution (LeakyReLU) per width, Ballé-style but small.

    No dense layer, so any image size works and the latent keeps the image's layout: one
    ``latent_dim``-channel vector per ``2 ** len(widths)`` pixel square. A 3x3 head gives the mean
    and log-variance of every latent element. 3x3 kernels and LeakyReLU (rather than 5x5 and GDN)
    because on a CPU budget of a few thousand steps they learned faster and further
    (docs/photo-models.md).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = config.channels
        for width in config.widths:
            layers += [nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(in_channels, 2 * config.latent_dim, 3, padding=1)
        with torch.no_grad():  # start with narrow posteriors so the decoder sees a signal from step one
            self.head.bias[config.latent_dim :] = SPATIAL_LOGVAR_INIT

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.head(self.features(x)).chunk(2, dim=1)
        return mean, logvar


class SpatialDecoder(nn.Module):
    """Synthesis transform: a 3x3 convolution from the latent, then per width a 3x3 convolution to
    four times the channels and a pixel shuffle (sub-pixel upsampling: no transposed-convolution
    checkerboards, and it trained faster), the last straight to pixels.

    Each stage exactly doubles the size, so an ``h x w`` latent gives a ``2^k h x 2^k w`` image;
    the VAE crops that back when the input was not a whole number of latent cells.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        widths = list(reversed(config.widths))
        layers: list[nn.Module] = [
            nn.Conv2d(config.latent_dim, widths[0], 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
        ]
        for index, width in enumerate(widths):
            last = index == len(widths) - 1
            out_width = config.channels if last else widths[index + 1]
            layers += [nn.Conv2d(width, 4 * out_width, 3, padding=1), nn.PixelShuffle(2)]
            if not last:
                layers.append(nn.LeakyReLU(LEAKY_SLOPE))
        self.upsample = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.upsample(z)


class VAE(nn.Module):
    """A VAE with a standard-normal prior, a diagonal Gaussian posterior and a chosen likelihood."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        if config.arch == "conv":
            self.encoder: nn.Module = ConvEncoder(config)
            self.decoder: nn.Module = ConvDecoder(config)
        elif config.arch == "spatial":
            self.encoder = SpatialEncoder(config)
            self.decoder = SpatialDecoder(config)
        else:
            self.encoder = MlpEncoder(config)
            self.decoder = MlpDecoder(config)
        # A per-channel log-scale, learned only for "gaussian-learned"; a buffer otherwise so the
        # fixed scale travels with the weights and the fingerprint covers it.
        log_scale = torch.full((config.channels,), math.log(config.scale))
        if config.likelihood == "gaussian-learned":
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    # -- the two halves that get exported ------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Likelihood parameters: logits (bernoulli) or unclamped means (the others).

        A spatial model returns whole latent cells; compare with `crop_to` for other sizes.
        """
        return self.decoder(z)

    def decode_mean(self, z: Tensor) -> Tensor:
        """The image a person sees: the likelihood's mean in [0, 1]."""
        out = self.decode(z)
        if self.config.likelihood == "bernoulli":
            return torch.sigmoid(out)
        return out.clamp(0.0, 1.0)

    # -- probabilistic pieces -----------------------------------------------------------------
    def log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x|z) per image, in nats, summed over pixels. Shape (N,)."""
        kind = self.config.likelihood
        out = crop_to(out, x)
        if kind == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
        log_scale = self.log_scale.view(1, -1, 1, 1)
        if kind == "laplace":
            per_pixel = -(x - out).abs() / log_scale.exp() - log_scale - math.log(2.0)
        else:
            per_pixel = -0.5 * ((x - out) / log_scale.exp()) ** 2 - log_scale - 0.5 * LOG_2PI
        return per_pixel.flatten(1).sum(1)

    @staticmethod
    def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
        """KL(q(z|x) || N(0, I)) per image, in nats, summed over every latent element. Shape (N,)."""
        return objectives.gaussian_kl(mean, logvar).flatten(1).sum(1)

    @staticmethod
    def reparameterize(mean: Tensor, logvar: Tensor) -> Tensor:
        return objectives.reparameterize(mean, logvar)

    def forward(self, x: Tensor, kl_weight: float = 1.0) -> dict[str, Tensor]:
        """One Monte-Carlo ELBO estimate (`objectives.elbo_terms`, noise from the global RNG).

        ``loss`` is the batch mean of recon + kl_weight * KL; the rest are per image, detached.
        """
        terms = objectives.elbo_terms(self, x)
        return {
            "loss": terms.loss(kl_weight).mean(),
            "recon": terms.recon.detach(),
            "kl": terms.kl.detach(),
            "neg_elbo": terms.neg_elbo.detach(),
        }

    @torch.no_grad()
    def sample(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        """Decoded prior draws; a spatial model draws a latent of its training size."""
        z = torch.randn(count, *self.config.latent_shape(), generator=generator)
        return self.decode_mean(z)


def crop_to(out: Tensor, x: Tensor) -> Tensor:
    """A spatial decoder's output cropped to the image ``x`` (it covers whole latent cells)."""
    if out.ndim == 4 and out.shape[2:] != x.shape[2:]:
        return out[:, :, : x.shape[2], : x.shape[3]]
    return out


# -- images in and out of the networks --------------------------------------------------------
def to_network(images: np.ndarray | Tensor) -> Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1] (`imaging.to_float_nhwc`), on the CPU.

    A channels-last view rather than a contiguous copy: the memory layout every bundle so far was
    trained, validated and summarised with (convolutions on a contiguous copy of a colour batch
    agree only to the last bits, so a copy would move every photo run's weights).
    """
    return torch.from_numpy(imaging.to_float_nhwc(np.asarray(images))).permute(0, 3, 1, 2)


def to_uint8(images: Tensor) -> np.ndarray:
    """float (N, C, H, W) in [0, 1] -> uint8 (N, H, W, C), rounded like every other tool here."""
    return imaging.to_uint8_nhwc(images.detach().cpu().numpy())


@torch.no_grad()
def posterior(
    vae: VAE, images: np.ndarray | ImageRows, batch_size: int = POSTERIOR_BATCH
) -> tuple[Tensor, Tensor]:
    """The posterior's means and log-variances for uint8 (N, H, W, C) images, encoded in batches.

    What the card's latent statistics and the codec's entropy model are computed from.
    """
    means, logvars = [], []
    for start in range(0, len(images), batch_size):
        mean, logvar = vae.encode(to_network(images[start : start + batch_size]))
        means.append(mean)
        logvars.append(logvar)
    return torch.cat(means), torch.cat(logvars)


def build_model(config: ModelConfig) -> VAE:
    return VAE(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_weights(model: VAE, path: str | Path) -> None:
    """Save weights as safetensors, atomically (write then rename)."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    files.atomic_write_bytes(path, save(state))


def load_model(model: str | Path) -> VAE:
    """Load a bundle (name or folder) as a torch VAE in eval mode."""
    from safetensors.torch import load_file

    path = resolve_bundle(model)
    vae = VAE(load_model_config(path / CONFIG_FILE))
    vae.load_state_dict(load_file(path / WEIGHTS_FILE))
    return vae.eval()
