"""What every loader returns (`ImageSet`), the one error they raise, and the train/val split rule.

Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latentz.folder_cache import ImageRows

SPLITS = ("train", "val", "test", "all")


class DatasetError(ValueError):
    """A data set spec could not be resolved or its files are unusable; the message says why."""


@dataclass
class ImageSet:
    """Images of one split of one data set, plus where they came from (for model cards)."""

    images: np.ndarray | ImageRows  # uint8 (N, H, W, C); ImageRows only when loaded with lazy=True
    labels: np.ndarray | None  # int64 (N,) or None
    spec: str
    split: str  # "train" | "val" | "test" | "all"
    skipped: int = 0
    source_note: str = ""
    files: list[Path] = field(default_factory=list, repr=False)  # folder sets: the file of each image

    def __len__(self) -> int:
        return int(self.images.shape[0])


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) index arrays partitioning ``range(n)``, each sorted.

    ``round(n * val_fraction)`` images go to val, but at least one when the fraction is positive
    and there are two or more images, so a tiny set still has something to validate on.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if n < 0:
        raise DatasetError(f"cannot split {n} images")
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    permutation = np.random.default_rng(seed).permutation(n)
    return np.sort(permutation[n_val:]), np.sort(permutation[:n_val])


def check_arguments(split: str, image_size: int | None, channels: int | None, limit: int | None) -> None:
    """Refuse arguments no loader can honour, before any file is read."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if image_size is not None and not 1 <= image_size <= 4096:
        raise DatasetError(f"image_size must be between 1 and 4096, got {image_size}")
    if channels is not None and channels not in (1, 3):
        raise DatasetError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if limit is not None and limit < 0:
        raise DatasetError(f"limit must be non-negative, got {limit}")
