"""Training batches: rows of the run's images, as network floats, cropped and augmented.

Every draw (the epoch's shuffle, crop positions, augmentation) comes from the run's one seeded
``torch.Generator``, and every process of a distributed run makes the same draws, so batches are
the same whatever the world size and continue exactly after a resume.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from latentz.config import TrainConfig
from latentz.data import Images
from latentz.models import to_network


def images_at(images: Images, index: Tensor | slice | list[int]) -> Tensor:
    """The images at ``index`` as a uint8 tensor, whether they are in memory or in a folder cache."""
    return torch.from_numpy(images[index.numpy() if isinstance(index, Tensor) else index])


def training_batch(images: Images, index: Tensor, config: TrainConfig, generator: torch.Generator) -> Tensor:
    """The float (N, C, H, W) batch of the images at ``index``: cropped and augmented as configured."""
    x = to_network(images_at(images, index))
    if config.crop_size is not None:
        x = random_crop(x, config.crop_size, generator)
    if config.augment:
        x = augment_batch(x, generator)
    return x


def augment_batch(x: Tensor, generator: torch.Generator) -> Tensor:
    """Photo augmentation: random flip, small reflect-padded shift-crop, mild colour jitter.

    Small on purpose: the model should still reconstruct the data set's own framing and colours.
    All draws come from ``generator`` so augmented runs stay reproducible and resumable.
    """
    n, channels, height, width = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    pad = max(1, min(height, width) // 16)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    rows = (offsets[:, 0:1] + torch.arange(height)).view(n, 1, height, 1)
    cols = (offsets[:, 1:2] + torch.arange(width)).view(n, 1, 1, width)
    x = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(channels).view(1, channels, 1, 1), rows, cols]

    def jitter(strength: float) -> Tensor:
        return 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * strength

    x = x * jitter(0.1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * jitter(0.1) + mean
    if channels == 3:
        grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        x = (x - grey) * jitter(0.1) + grey
    return x.clamp_(0.0, 1.0)


def random_crop(x: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """A random ``size`` x ``size`` window of every image, each at its own position."""
    n, channels, height, width = x.shape
    if size >= height and size >= width:
        return x
    tops = torch.randint(0, height - size + 1, (n, 1), generator=generator)
    lefts = torch.randint(0, width - size + 1, (n, 1), generator=generator)
    rows = (tops + torch.arange(size)).view(n, 1, size, 1)
    cols = (lefts + torch.arange(size)).view(n, 1, 1, size)
    return x[torch.arange(n).view(n, 1, 1, 1), torch.arange(channels).view(1, channels, 1, 1), rows, cols]
