"""What training measures: the validation ELBO and PSNR after every epoch, the latent statistics at the end.

Validation uses the true ELBO (beta = 1) from `latentz.objectives` with noise redrawn from a fixed
seed every epoch, so epoch-to-epoch changes come from the model, not from the Monte-Carlo sample.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from latentz.data import Images
from latentz.metrics import psnr_per_image
from latentz.models import VAE, to_network, to_uint8
from latentz.objectives import elbo_terms, gaussian_kl
from latentz.train.batches import images_at

#: Validation noise is redrawn from this seed every epoch, so epoch-to-epoch changes in the
#: validation ELBO come from the model, not from the Monte-Carlo sample.
VAL_NOISE_SEED = 1234
EVAL_BATCH = 512


@torch.no_grad()
def validate(model: VAE, images: Images, batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """True (beta = 1) ELBO terms per image and PSNR of the mean reconstruction, with fixed noise."""
    generator = torch.Generator().manual_seed(VAL_NOISE_SEED)
    device = next(model.parameters()).device

    def seeded_noise(mean: Tensor) -> Tensor:
        return torch.randn(mean.shape, generator=generator).to(device)

    totals = {"neg_elbo": 0.0, "recon": 0.0, "kl": 0.0}
    psnrs = []
    was_training = model.training
    model.eval()
    for start in range(0, len(images), batch_size):
        batch = images_at(images, slice(start, start + batch_size))
        terms = elbo_terms(model, to_network(batch).to(device), seeded_noise)
        totals["recon"] += float(terms.recon.sum())
        totals["kl"] += float(terms.kl.sum())
        totals["neg_elbo"] += float(terms.neg_elbo.sum())
        psnrs.append(psnr_per_image(batch.numpy(), to_uint8(model.decode_mean(terms.mean))))
    model.train(was_training)
    metrics = {key: value / len(images) for key, value in totals.items()}
    # Mean of per-image PSNRs (what metrics.psnr and `latentz eval` report), batch by batch.
    metrics["psnr"] = float(np.mean(np.concatenate(psnrs)))
    return metrics


def latent_stats(mean: Tensor, logvar: Tensor) -> dict[str, list[float]]:
    """Per-channel statistics of posterior means (N, C, ...), plus the mean KL per channel.

    The explorer sets its slider ranges from p1/p99; ``kl`` (nats, summed over a channel's
    positions for spatial latents) says which channels are in use.
    """
    kl = gaussian_kl(mean, logvar)
    channels = mean.shape[1]
    means = mean.double().movedim(1, 0).reshape(channels, -1).numpy()
    kl_per_channel = kl.double().flatten(2).sum(2) if kl.ndim > 2 else kl.double()
    return {
        "mean": means.mean(1).tolist(),
        "std": means.std(1).tolist(),
        "p1": np.percentile(means, 1, axis=1).tolist(),
        "p99": np.percentile(means, 99, axis=1).tolist(),
        "kl": kl_per_channel.mean(0).tolist(),
    }
