"""A mean-scale hyperprior image codec trained for rate-distortion (Ballé et al. 2018, Minnen et
al. 2018), small enough to train on a CPU, with an integer hyper-decoder (Ballé, Johnston &
Minnen 2019) so that decoding is bit-exact. In the spirit of CompressAI's ``MeanScaleHyperprior``,
without depending on it.

    x ──g_a──> y ──h_a──> z ──round──> ẑ ──h_s (integer)──> μ, v
    symbols = round((y - μ) / step),  step_c = SCALE_RATIO ** k_c,  scale index = clip(v - k_c, 0, 63)
    ŷ = symbols * step + μ ──g_s──> x̂

Training minimises ``λ·D + R`` with ``D`` the mean squared error on the 0..255 scale (as in
CompressAI's ``RateDistortionLoss``) and ``R`` in bits per pixel: the code length of ``y`` under
its Gaussians plus that of ``ẑ`` under a learned factorised density. Rates see additive uniform
noise; the synthesis sees rounded values (straight-through), as CompressAI does. Variable rate
comes from gain units (Cui et al. 2021): one learned integer offset ``k`` per channel and trained
λ, which sets that channel's quantisation step; the hyperprior itself does not depend on λ, so
one set of integer tables serves every quality. The bit-exact decoding half lives in
`latentz.codec.hyper` (numpy); `HyperSynthesis.to_integer` produces its parameters.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from latentz.codec import hyper
from latentz.config import HyperpriorConfig
from latentz.objectives import rate_distortion_terms

__all__ = ["HyperpriorCodec", "HyperpriorConfig"]

LEAKY_SLOPE = 0.2
LOG_SCALE_MIN = math.log(hyper.SCALE_MIN)
LOG_RATIO = math.log(hyper.SCALE_RATIO)
LIKELIHOOD_FLOOR = 1e-9


class GDN(nn.Module):
    """Generalised divisive normalisation, ``x / sqrt(β + Γ x²)`` (or times, for the inverse)."""

    def __init__(self, channels: int, inverse: bool = False) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(0.1 * torch.eye(channels))

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        gamma = self.gamma.abs().view(channels, channels, 1, 1)
        norm = torch.sqrt(F.conv2d(x * x, gamma, self.beta.abs() + 1e-6))
        return x * norm if self.inverse else x / norm


def _activation(config: HyperpriorConfig, channels: int, inverse: bool) -> nn.Module:
    if config.activation == "gdn":
        return GDN(channels, inverse=inverse)
    if config.activation == "leaky":
        return nn.LeakyReLU(LEAKY_SLOPE)
    raise ValueError(f"unknown activation {config.activation!r}")


def analysis(config: HyperpriorConfig) -> nn.Sequential:
    """g_a: stride-2 3x3 convolutions, one per width, then one to the latent channels."""
    layers: list[nn.Module] = []
    in_channels = 3
    for width in config.widths:
        layers += [nn.Conv2d(in_channels, width, 3, stride=2, padding=1), _activation(config, width, False)]
        in_channels = width
    layers.append(nn.Conv2d(in_channels, config.latent_channels, 3, stride=2, padding=1))
    return nn.Sequential(*layers)


def _upsample(config: HyperpriorConfig, in_channels: int, out_channels: int) -> list[nn.Module]:
    if config.upsample == "shuffle":
        return [nn.Conv2d(in_channels, 4 * out_channels, 3, padding=1), nn.PixelShuffle(2)]
    if config.upsample == "deconv":
        return [nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)]
    raise ValueError(f"unknown upsampling {config.upsample!r}")


def synthesis(config: HyperpriorConfig) -> nn.Sequential:
    """g_s: the mirror of g_a, each stage doubling the size; the last straight to RGB."""
    widths = list(reversed(config.widths))
    layers: list[nn.Module] = []
    in_channels = config.latent_channels
    for width in widths:
        layers += [*_upsample(config, in_channels, width), _activation(config, width, True)]
        in_channels = width
    layers += _upsample(config, in_channels, 3)
    return nn.Sequential(*layers)


def hyper_analysis(config: HyperpriorConfig) -> nn.Sequential:
    """h_a: y -> z at a quarter of y's resolution (3x3 convolutions, two of stride 2)."""
    n, m = config.hyper_channels, config.latent_channels
    return nn.Sequential(
        nn.Conv2d(m, n, 3, padding=1),
        nn.LeakyReLU(LEAKY_SLOPE),
        nn.Conv2d(n, n, 3, stride=2, padding=1),
        nn.LeakyReLU(LEAKY_SLOPE),
        nn.Conv2d(n, config.hyper_latent_channels, 3, stride=2, padding=1),
    )


class _STERound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return torch.floor(x + 0.5)  # ties upward, like the integer code

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


def ste_round(x: Tensor) -> Tensor:
    """Round half up in the forward pass, identity gradient (straight-through)."""
    return _STERound.apply(x)


class _Bounded(torch.autograd.Function):
    """Clamp to [low, high] whose gradient still passes when it would move the value back inside
    (CompressAI's ``LowerBound``, on both sides), so a parameter stuck at a bound can recover."""

    @staticmethod
    def forward(ctx, x: Tensor, low: float, high: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.bounds = (low, high)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        low, high = ctx.bounds
        passes = ((x >= low) | (grad < 0)) & ((x <= high) | (grad > 0))
        return grad * passes, None, None


def bounded(x: Tensor, low: float, high: float) -> Tensor:
    return _Bounded.apply(x, low, high)


class HyperSynthesis(nn.Module):
    """h_s, built so that it has an exact integer twin: 3x3 convolutions, pixel shuffles and ReLUs.

    Two upsampling stages (ẑ -> 2x -> 4x) then a 3x3 convolution to ``2 M`` channels: the means
    and the raw scale index ``v`` (in table steps). With `quantized` set (after `calibrate`), the
    forward pass simulates the integer network: int8 weights per output channel, integer biases,
    8-bit activations and a rounded index, all straight-through, for fine-tuning.
    """

    def __init__(self, config: HyperpriorConfig) -> None:
        super().__init__()
        n, m = config.hyper_channels, config.latent_channels
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(config.hyper_latent_channels, 4 * n, 3, padding=1),
                nn.Conv2d(n, 4 * n, 3, padding=1),
                nn.Conv2d(n, 2 * m, 3, padding=1),
            ]
        )
        self.latent_channels = m
        self.quantized = False
        self.register_buffer("activation_scales", torch.ones(len(self.convs) - 1))

    def forward(self, z_hat: Tensor, latent_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x, input_scale = z_hat, 1.0
        for index, conv in enumerate(self.convs):
            last = index == len(self.convs) - 1
            x = self._conv(conv, x, input_scale)
            if last:
                break
            x = F.pixel_shuffle(x, 2)
            if self.quantized:
                scale = float(self.activation_scales[index])
                x = ste_round(x.div(scale).clamp(0, hyper.ACTIVATION_MAX)) * scale
                input_scale = scale
            else:
                x = F.relu(x)
        x = x[:, :, : latent_size[0], : latent_size[1]]
        mean, index = x.chunk(2, dim=1)
        return mean, ste_round(index) if self.quantized else index

    def _conv(self, conv: nn.Conv2d, x: Tensor, input_scale: float) -> Tensor:
        if not self.quantized:
            return conv(x)
        weight_scale = _weight_scales(conv.weight).detach()
        weight = ste_round(conv.weight / weight_scale.view(-1, 1, 1, 1)) * weight_scale.view(-1, 1, 1, 1)
        bias_step = weight_scale * input_scale
        return F.conv2d(x, weight, ste_round(conv.bias / bias_step) * bias_step, padding=1)

    @torch.no_grad()
    def calibrate(self, z_hat: Tensor, latent_size: tuple[int, int], percentile: float = 99.99) -> None:
        """Set each hidden activation's 8-bit scale from ẑ of training images (a high percentile of
        the float activations over 255), then switch to simulated-integer mode."""
        self.quantized = False
        x = z_hat
        for index, conv in enumerate(self.convs[:-1]):
            x = F.relu(F.pixel_shuffle(conv(x), 2))
            top = float(torch.quantile(x.flatten()[:1_000_000], percentile / 100))
            self.activation_scales[index] = max(top, 1e-3) / hyper.ACTIVATION_MAX
            scale = float(self.activation_scales[index])
            x = (x / scale).round().clamp(0, hyper.ACTIVATION_MAX) * scale
        self.quantized = True

    @torch.no_grad()
    def to_integer(self) -> hyper.IntegerHyperDecoder:
        """The exact integer twin (what `quantized` simulates), as numpy parameters."""
        layers = []
        input_scale = 1.0
        for index, conv in enumerate(self.convs):
            last = index == len(self.convs) - 1
            weight_scale = _weight_scales(conv.weight).double()
            weight = torch.floor(conv.weight.double() / weight_scale.view(-1, 1, 1, 1) + 0.5).long()
            bias = torch.floor(conv.bias.double() / (weight_scale * input_scale) + 0.5).long()
            output_scale = 1.0 if last else float(self.activation_scales[index])
            ratios = (weight_scale * input_scale / output_scale).numpy()
            multiplier, shift = _fixed_point(ratios)
            layers.append(
                hyper.IntegerConv(weight.numpy(), bias.numpy(), multiplier, shift, shuffle=not last)
            )
            if last:
                mean_scales = (weight_scale * input_scale)[: self.latent_channels].numpy().astype(np.float32)
            input_scale = output_scale
        return hyper.IntegerHyperDecoder(hidden=tuple(layers[:-1]), final=layers[-1], mean_scales=mean_scales)


def _weight_scales(weight: Tensor) -> Tensor:
    """Per-output-channel scale that maps the largest weight to ``WEIGHT_MAX``."""
    return weight.detach().abs().flatten(1).amax(1).clamp_min(1e-8) / hyper.WEIGHT_MAX


def _fixed_point(ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``ratio ≈ multiplier / 2**shift`` with a 15-bit multiplier in [2^14, 2^15)."""
    exponents = np.floor(np.log2(ratios)).astype(np.int64)
    shift = np.clip(14 - exponents, 1, 48)
    multiplier = np.clip(np.floor(ratios * 2.0**shift + 0.5), 1, 1 << 16).astype(np.int64)
    return multiplier, shift.astype(np.int64)


class FactorizedDensity(nn.Module):
    """Ballé et al. 2018's non-parametric density (appendix 6.1), one per channel: a monotone
    function of ``x`` through small matrices with softplus weights gives the logit of the CDF."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0) -> None:
        super().__init__()
        sizes = (1, *filters, 1)
        scale = init_scale ** (1 / (len(sizes) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for index in range(len(sizes) - 1):
            init = math.log(math.expm1(1 / scale / sizes[index + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, sizes[index + 1], sizes[index]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, sizes[index + 1], 1) - 0.5))
            if index < len(sizes) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, sizes[index + 1], 1)))

    def logits(self, x: Tensor) -> Tensor:
        """CDF logits at ``x`` shaped (C, 1, n)."""
        for index, (matrix, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            x = torch.matmul(F.softplus(matrix), x) + bias
            if index < len(self.factors):
                x = x + torch.tanh(self.factors[index]) * torch.tanh(x)
        return x

    def likelihood(self, z: Tensor) -> Tensor:
        """Probability of the unit bin around each value of ``z`` (N, C, h, w)."""
        n, c, h, w = z.shape
        values = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower, upper = self.logits(values - 0.5), self.logits(values + 0.5)
        sign = -torch.sign(lower + upper).detach()  # evaluate in the flatter tail, as CompressAI does
        p = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        return p.reshape(c, n, h, w).permute(1, 0, 2, 3).clamp_min(LIKELIHOOD_FLOOR)

    @torch.no_grad()
    def tables(self, radius: int = 512) -> hyper.IntegerTables:
        """Integer tables over the integers that carry more than ``TAIL_MASS`` (float64, once)."""
        grid = torch.arange(-radius, radius + 1, dtype=torch.float64)
        channels = self.matrices[0].shape[0]
        values = grid.view(1, 1, -1).expand(channels, 1, -1)
        density = self.double()
        upper_cdf = torch.sigmoid(density.logits(values + 0.5)).squeeze(1)
        lower_cdf = torch.sigmoid(density.logits(values - 0.5)).squeeze(1)
        self.float()
        lows, probabilities = [], []
        for channel in range(channels):
            keep = (upper_cdf[channel] > hyper.TAIL_MASS / 2) & (lower_cdf[channel] < 1 - hyper.TAIL_MASS / 2)
            where = torch.nonzero(keep).flatten()
            first, last = (int(where[0]), int(where[-1])) if len(where) else (radius, radius)
            lows.append(first - radius)
            probabilities.append((upper_cdf[channel] - lower_cdf[channel])[first : last + 1].numpy())
        return hyper.factorized_tables(lows, probabilities)


def gaussian_likelihood(residual: Tensor, log_scale: Tensor) -> Tensor:
    """Probability of the unit bin around ``residual`` under N(0, exp(log_scale)), computed on the
    side of zero where it is accurate."""
    scale = log_scale.exp()
    values = residual.abs()
    upper = 0.5 * torch.erfc(-(0.5 - values) / (scale * math.sqrt(2)))
    lower = 0.5 * torch.erfc(-(-0.5 - values) / (scale * math.sqrt(2)))
    return (upper - lower).clamp_min(LIKELIHOOD_FLOOR)


class HyperpriorCodec(nn.Module):
    """g_a, g_s, h_a, h_s, the density of z and the gain offsets of each trained λ."""

    def __init__(self, config: HyperpriorConfig) -> None:
        super().__init__()
        self.config = config
        self.g_a, self.g_s = analysis(config), synthesis(config)
        self.h_a, self.h_s = hyper_analysis(config), HyperSynthesis(config)
        self.z_density = FactorizedDensity(config.hyper_latent_channels)
        levels = len(config.lambdas)
        # Offsets in table steps (step = SCALE_RATIO ** k): higher λ, finer steps. Three table
        # steps (x1.45) between neighbouring λs to start with; training moves them.
        start = torch.tensor([3.0 * (levels - 1 - 2 * i) / 2 for i in range(levels)])
        self.gain_offsets = nn.Parameter(start.view(-1, 1).repeat(1, config.latent_channels))
        self.register_buffer("lambdas", torch.tensor(config.lambdas, dtype=torch.float32))

    def analyse(self, x: Tensor) -> Tensor:
        """g_a on images in [0, 1], centred first (zero-mean inputs train faster)."""
        return self.g_a(x - 0.5)

    def synthesise(self, y_hat: Tensor) -> Tensor:
        """g_s back to [0, 1] (unclamped), so a zero latent decodes to mid-grey from the start."""
        return self.g_s(y_hat) + 0.5

    def forward(self, x: Tensor, levels: Tensor) -> dict[str, Tensor]:
        """One training step's terms for images ``x`` in [0, 1] (N, 3, H, W), H and W multiples of
        the cell, each coded at its trained λ ``levels`` (N,) (an index into ``lambdas``)."""
        y = self.analyse(x)
        z = self.h_a(y)
        z_bits = -torch.log2(self.z_density.likelihood(z + torch.rand_like(z) - 0.5)).flatten(1).sum(1)
        mean, raw_index = self.h_s(ste_round(z), y.shape[-2:])
        offsets = ste_round(self.gain_offsets[levels]).view(len(x), -1, 1, 1)
        step = torch.exp(offsets * LOG_RATIO)
        residual = (y - mean) / step
        log_scale = LOG_SCALE_MIN + bounded(raw_index - offsets, 0.0, hyper.SCALE_LEVELS - 1.0) * LOG_RATIO
        noisy = residual + torch.rand_like(residual) - 0.5
        y_bits = -torch.log2(gaussian_likelihood(noisy, log_scale)).flatten(1).sum(1)
        x_hat = self.synthesise(ste_round(residual) * step + mean)
        return rate_distortion_terms(x, x_hat, y_bits, z_bits, self.lambdas[levels])

    def integer_levels(self) -> np.ndarray:
        """The trained gain offsets rounded to integers, ordered from the lowest λ to the highest."""
        return torch.floor(self.gain_offsets.detach() + 0.5).long().numpy()
