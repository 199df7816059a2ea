"""Held-out evaluation of a VAE: likelihood bounds, bits/dim, reconstruction quality, active units.

The ELBO's terms come from `latentz.objectives.elbo_terms`, the function training minimises.

All figures are averages per image over the given images:

- ``neg_elbo_nats`` = ``recon_nats`` + ``kl_nats``: the negative ELBO, estimated with ONE sample
  z ~ q(z|x) per image from a fixed seed (the ELBO is an expectation over q, so plugging in the
  posterior mean would overstate it). The KL part is exact (closed form).
- ``iwae_nats``: the negative importance-weighted bound of Burda et al. (2016) with K samples,
  ``-log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x)``. It is a tighter upper bound on -log p(x) than
  the negative ELBO and approaches it as K grows.
- ``bits_per_dim`` = ``nats / (num_pixels * ln 2)``. The data are 8-bit grey levels scaled to
  [0, 1], *not binarized*. For continuous likelihoods (gaussian, gaussian-learned, laplace) the
  model gives a density on [0, 1]; adding ``ln 256`` nats per dimension turns it into the
  probability of the pixel's 1/256-wide bin (density x bin width), the usual convention for
  comparing with discrete models. For ``bernoulli`` on grey levels no such correction exists
  (the Bernoulli "likelihood" of a grey value is not a normalised distribution over the 256
  levels), so its bits/dim is only comparable with other bernoulli models on the same data.
- ``psnr_db`` / ``ssim``: of the mean reconstruction ``decode_mean(mean of q(z|x))``, rounded to
  8 bits like any image we show; PSNR is the mean of per-image PSNRs.
- ``active_units``: latent dimensions whose posterior mean varies across the data,
  ``Cov_x(E_q[z_d]) > 0.01`` (Burda et al. 2016); the rest are ignored by the decoder.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latentz import imaging, metrics
from latentz.models import LOG_2PI, VAE
from latentz.objectives import elbo_terms

EVAL_BATCH = 256
# Decoder evaluations per chunk in the IWAE loop: bounds memory whatever K is.
IWAE_CHUNK_DECODES = 4096
ACTIVE_UNIT_THRESHOLD = 0.01
CONTINUOUS_LIKELIHOODS = ("gaussian", "gaussian-learned", "laplace")


def discretisation_nats_per_dim(likelihood: str) -> float:
    """Nats added per dimension to turn a density on [0, 1] into 8-bit bin probabilities."""
    return math.log(256) if likelihood in CONTINUOUS_LIKELIHOODS else 0.0


def bits_per_dim(nats_per_image: float, num_pixels: int, likelihood: str) -> float:
    """Bits per dimension of 8-bit data from nats per image (see the module docstring)."""
    return (nats_per_image + num_pixels * discretisation_nats_per_dim(likelihood)) / (
        num_pixels * math.log(2)
    )


def _log_normal(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mean, exp(logvar)) summed over the last dimension."""
    return -0.5 * (((z - mean) ** 2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def iwae_bound(
    vae: VAE, x: Tensor, mean: Tensor, logvar: Tensor, samples: int, generator: torch.Generator
) -> Tensor:
    """Negative IWAE bound per image (nats), shape (N,), using ``samples`` importance samples."""
    n = x.shape[0]
    chunk = max(1, IWAE_CHUNK_DECODES // n)
    log_weights = []
    std = torch.exp(0.5 * logvar)
    for start in range(0, samples, chunk):
        k = min(chunk, samples - start)
        noise = torch.randn((k, *mean.shape), generator=generator)
        z = mean.unsqueeze(0) + noise * std.unsqueeze(0)  # (k, N, D)
        flat_z = z.reshape(k * n, -1)
        repeated_x = x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:])
        log_px = vae.log_likelihood(repeated_x, vae.decode(flat_z)).view(k, n)
        log_pz = _log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
        log_qz = _log_normal(z, mean.unsqueeze(0), logvar.unsqueeze(0))
        log_weights.append(log_px + log_pz - log_qz)
    stacked = torch.cat(log_weights, dim=0).double()  # (K, N)
    return -(torch.logsumexp(stacked, dim=0) - math.log(samples))


def _check_images(vae: VAE, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    expected = (vae.config.image_size, vae.config.image_size, vae.config.channels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(
            f"the model takes uint8 images shaped (N, {expected[0]}, {expected[1]}, {expected[2]}); "
            f"got {images.dtype} {images.shape}"
        )
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    return images


@torch.no_grad()
def evaluate(
    vae: VAE,
    images_uint8: np.ndarray,
    iwae_samples: int | None = None,
    seed: int = 0,
    batch_size: int = EVAL_BATCH,
) -> dict[str, Any]:
    """Evaluate ``vae`` on uint8 ``(N, H, W, C)`` images; every figure is a per-image average.

    Deterministic for a given ``seed``: all sampling draws from one seeded generator.
    """
    images = _check_images(vae, images_uint8)
    if iwae_samples is not None and iwae_samples < 1:
        raise ValueError(f"the IWAE bound needs at least 1 sample, got {iwae_samples}")
    ssim_possible = vae.config.image_size >= metrics.SSIM_WINDOW
    was_training = vae.training
    vae.eval()
    try:
        sums, posterior_means = _sums(vae, images, iwae_samples, ssim_possible, seed, batch_size)
    finally:
        vae.train(was_training)
    count = len(images)
    num_pixels = vae.config.num_pixels
    likelihood = vae.config.likelihood
    recon = sums["recon"] / count
    kl = sums["kl"] / count
    results: dict[str, Any] = {"neg_elbo_nats": recon + kl, "recon_nats": recon, "kl_nats": kl}
    if iwae_samples is not None:
        results["iwae_nats"] = sums["iwae"] / count
        results["iwae_samples"] = iwae_samples
        results["iwae_bits_per_dim"] = bits_per_dim(results["iwae_nats"], num_pixels, likelihood)
    results.update(
        {
            "bits_per_dim": bits_per_dim(recon + kl, num_pixels, likelihood),
            "psnr_db": sums["psnr"],
            "ssim": sums["ssim"] / count if ssim_possible else None,
            "active_units": int(np.sum(posterior_means.var(axis=0) > ACTIVE_UNIT_THRESHOLD)),
            "latent_dim": vae.config.latent_dim,
            "n_images": count,
            "likelihood": likelihood,
            "pixels": "grey-level",
            "bits_per_dim_note": (
                f"8-bit grey levels in [0, 1], not binarized; {likelihood} density + ln(256) nats per dim"
                if likelihood in CONTINUOUS_LIKELIHOODS
                else "8-bit grey levels in [0, 1], not binarized; bernoulli on grey levels is not a "
                "normalised discrete likelihood, compare only with other bernoulli models"
            ),
        }
    )
    return results


def _sums(
    vae: VAE, images: np.ndarray, iwae_samples: int | None, ssim_possible: bool, seed: int, batch_size: int
) -> tuple[dict[str, float], np.ndarray]:
    """Batch by batch: summed ELBO terms (`objectives.elbo_terms`), IWAE bounds and SSIM, the mean
    per-image PSNR, and every image's posterior mean (for the active units)."""
    generator = torch.Generator().manual_seed(seed)
    iwae_generator = torch.Generator().manual_seed(seed + 1)
    sums = {"recon": 0.0, "kl": 0.0, "iwae": 0.0, "ssim": 0.0}
    psnrs: list[np.ndarray] = []
    means: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        x = torch.from_numpy(imaging.to_float_nchw(batch))
        terms = elbo_terms(vae, x, lambda mean: torch.randn(mean.shape, generator=generator))
        sums["recon"] += float(terms.recon.double().sum())
        sums["kl"] += float(terms.kl.double().sum())
        if iwae_samples is not None:
            sums["iwae"] += float(
                iwae_bound(vae, x, terms.mean, terms.logvar, iwae_samples, iwae_generator).sum()
            )
        reconstruction = imaging.to_uint8_nhwc(vae.decode_mean(terms.mean).numpy())
        psnrs.append(metrics.psnr_per_image(batch, reconstruction))
        if ssim_possible:
            sums["ssim"] += metrics.ssim(batch, reconstruction) * len(batch)
        means.append(terms.mean.double().numpy())
    return {**sums, "psnr": float(np.mean(np.concatenate(psnrs)))}, np.concatenate(means)
