"""What a model is trained and measured on, per image, computed in exactly one place per model.

`elbo_terms` is the VAE's: the reconstruction term -log p(x|z) at one reparameterised sample
z ~ q(z|x), and the closed-form KL(q(z|x) || N(0, I)), both in nats per image. The training step
(`VAE.forward`), the distributed shards (`latentz.distributed.ShardObjective`), validation after
every epoch and `latentz eval` (`latentz.evaluation.evaluate`) all take their terms from it; they
differ only in where the noise comes from and how they sum. The rate-distortion loss of the photo
codec v2 is `rate_distortion_terms`: λ·D + R per image, with D the mean squared error on the
0..255 scale (CompressAI's convention, so published λ values carry over) and R in bits per pixel.

Models are duck-typed (`Autoencoder`), so this module imports no model and every model may use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

#: Standard-normal noise shaped like the posterior mean it is given: ``torch.randn_like`` (the
#: global RNG, on the mean's device) unless a caller needs a seeded generator or a shard's slice.
Noise = Callable[[Tensor], Tensor]


class Autoencoder(Protocol):
    """What `elbo_terms` needs of a model: a Gaussian encoder, a decoder and its likelihood."""

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def decode(self, z: Tensor) -> Tensor: ...

    def log_likelihood(self, x: Tensor, out: Tensor) -> Tensor: ...

    def kl_divergence(self, mean: Tensor, logvar: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class ElboTerms:
    """One Monte-Carlo estimate of the ELBO's terms for a batch; every tensor is per image, (N,)."""

    mean: Tensor  # the posterior q(z|x): mean and log-variance, (N, *latent)
    logvar: Tensor
    recon: Tensor  # -log p(x|z) in nats at the sampled z
    kl: Tensor  # KL(q(z|x) || N(0, I)) in nats, exact

    @property
    def neg_elbo(self) -> Tensor:
        """The true (beta = 1) negative ELBO, what every reported figure uses."""
        return self.recon + self.kl

    def loss(self, kl_weight: float) -> Tensor:
        """What training minimises per image: recon + kl_weight * KL (beta and its warm-up)."""
        return self.recon + kl_weight * self.kl


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) of every latent element, in nats (same shape as ``mean``)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def reparameterize(mean: Tensor, logvar: Tensor, noise: Noise = torch.randn_like) -> Tensor:
    """A sample z ~ q(z|x) = N(mean, exp(logvar)) as a differentiable function of the posterior."""
    return mean + noise(mean) * (0.5 * logvar).exp()


def elbo_terms(model: Autoencoder, x: Tensor, noise: Noise = torch.randn_like) -> ElboTerms:
    """The ELBO's terms for images ``x`` (float (N, C, H, W) in [0, 1]) at one sample of q(z|x)."""
    mean, logvar = model.encode(x)
    recon = -model.log_likelihood(x, model.decode(reparameterize(mean, logvar, noise)))
    return ElboTerms(mean=mean, logvar=logvar, recon=recon, kl=model.kl_divergence(mean, logvar))


def rate_distortion_terms(
    x: Tensor, x_hat: Tensor, y_bits: Tensor, z_bits: Tensor, lambdas: Tensor
) -> dict[str, Tensor]:
    """The photo codec's training loss ``mean(λ·MSE + bpp)`` and its parts, per image.

    ``x`` and ``x_hat`` are (N, C, H, W) in [0, 1]; ``y_bits`` and ``z_bits`` (N,) are the code
    lengths of the latents and hyper-latents; ``lambdas`` (N,) each image's trade-off. Bits are per
    pixel (not per channel value), as codec papers and `latentz rd` report them.
    """
    pixels = x.shape[-2] * x.shape[-1]
    mse = ((x_hat - x) * 255).pow(2).flatten(1).mean(1)
    bpp_y, bpp_z = y_bits / pixels, z_bits / pixels
    loss = (lambdas * mse + bpp_y + bpp_z).mean()
    return {"loss": loss, "mse": mse.detach(), "bpp_y": bpp_y.detach(), "bpp_z": bpp_z.detach()}
