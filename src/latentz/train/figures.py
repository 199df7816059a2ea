"""The five figures of a bundle: reconstructions, samples, traversals, interpolation, loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentz.data import TrainingData
from latentz.models import VAE, to_network, to_uint8
from latentz.train.batches import images_at

MAX_TRAVERSAL_DIMS = 16
TRAVERSAL_VALUES = (-3.0, -2.25, -1.5, -0.75, 0.0, 0.75, 1.5, 2.25, 3.0)


def _pick_pair(labels: np.ndarray | None, count: int) -> tuple[int, int]:
    """Two validation images to interpolate between: different classes when labels are known."""
    if labels is not None and len(labels) == count:
        for index in range(1, count):
            if labels[index] != labels[0]:
                return 0, index
    return 0, min(1, count - 1)


@torch.no_grad()
def write_plots(
    model: VAE, data: TrainingData, history: list[dict[str, Any]], plots_dir: Path, kl_per_dim: list[float]
) -> None:
    """The five bundle figures: reconstructions, samples, traversal, interpolation, loss."""
    from latentz import plots

    model.eval()
    val = images_at(data.val, slice(0, 16))
    mean, _ = model.encode(to_network(val))
    plots.plot_reconstructions(
        val.numpy(), to_uint8(model.decode_mean(mean)), plots_dir / "reconstructions.png"
    )
    samples = model.sample(64, generator=torch.Generator().manual_seed(0))
    plots.plot_samples(
        to_uint8(samples), plots_dir / "samples.png", title="Samples: decoded draws from the prior N(0, I)"
    )
    order = sorted(range(len(kl_per_dim)), key=lambda d: -kl_per_dim[d])[:MAX_TRAVERSAL_DIMS]
    values = torch.tensor(TRAVERSAL_VALUES)
    base = mean[0]
    # A spatial latent's channel is a whole feature map: its traversal sets it everywhere at once.
    per_row = (-1, *[1] * (base.ndim - 1))
    rows = []
    for dim in order:
        z = base.unsqueeze(0).repeat(len(values), *[1] * base.ndim)
        z[:, dim] = values.view(per_row)
        rows.append(to_uint8(model.decode_mean(z)))
    unit = "channel" if model.config.fully_convolutional else "dimension"
    labels = [f"z{dim}  KL {kl_per_dim[dim]:.2f}" for dim in order]
    plots.plot_traversal(
        np.stack(rows),
        plots_dir / "traversal.png",
        list(TRAVERSAL_VALUES),
        labels,
        title=f"Latent traversals around a validation image (rows: most-used {unit}s)",
    )
    first, second = _pick_pair(data.val_labels, len(data.val))
    ends, _ = model.encode(to_network(images_at(data.val, [first, second])))
    weights = torch.linspace(0, 1, 10).view(-1, *[1] * (ends.ndim - 1))
    strip = model.decode_mean((1 - weights) * ends[0] + weights * ends[1])
    plots.plot_interpolation(to_uint8(strip), plots_dir / "interpolation.png")
    plots.plot_loss(history, plots_dir / "loss.png")
