"""The images of a training run, and the same split of them for the bundle it became.

A run's train and validation images depend only on its `TrainConfig` (the data spec, the model's
image size and channels, ``val_fraction`` and ``max_train_images``) and on `SPLIT_SEED`, never on
the training seed: `latentz eval`, `latentz rd` and `latentz export` redraw exactly the split the
run trained and validated on. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentz.bundle import training_val_fraction
from latentz.config import ConfigError, TrainConfig
from latentz.data.sets import ImageSet
from latentz.data.specs import load_dataset
from latentz.folder_cache import ImageRows

#: The train/val split never depends on the training seed, so runs with different seeds (and
#: `latentz eval` afterwards) are all measured on the same validation images.
SPLIT_SEED = 0

#: Images as a run holds them: uint8 (N, H, W, C) in memory, or a folder cache's rows.
Images = np.ndarray | ImageRows


@dataclass
class TrainingData:
    train: Images  # uint8 (N, H, W, C)
    val: Images
    val_labels: np.ndarray | None
    spec: str
    source_note: str
    skipped: int


def split_limit(config: TrainConfig, split: str) -> int | None:
    """``max_train_images`` caps the training split; validation shrinks in the same proportion."""
    cap = config.max_train_images
    if cap is None or split == "train":
        return cap
    return max(1, math.ceil(cap * config.val_fraction / (1 - config.val_fraction)))


def load_training_data(config: TrainConfig, *, lazy: bool = False, progress: bool = False) -> TrainingData:
    """The run's train and validation images, exactly as training sees them (split, limit, size).

    ``lazy`` leaves a photo folder's images in its memory-mapped cache (built first if needed, with
    a progress bar if ``progress``); the images are the same, read a batch at a time. Images of the
    wrong shape for the model are a `ConfigError`; an empty split is for the caller to judge.
    """
    model = config.model
    sets = {
        split: load_dataset(
            config.data,
            split=split,
            image_size=model.image_size,
            channels=model.channels,
            val_fraction=config.val_fraction,
            seed=SPLIT_SEED,
            limit=split_limit(config, split),
            lazy=lazy,
            progress=progress and split == "train",
        )
        for split in ("train", "val")
    }
    expected = (model.image_size, model.image_size, model.channels)
    for split, images in sets.items():
        if images.images.shape[1:] != expected:
            raise ConfigError(
                f"the {split} images of {config.data} are {images.images.shape[1:]} (H, W, C) but the model "
                f"expects {expected}; set --image-size/--channels to match"
            )
    train_set, val_set = sets["train"], sets["val"]
    return TrainingData(
        train=train_set.images,
        val=val_set.images,
        val_labels=val_set.labels,
        spec=train_set.spec,
        source_note=train_set.source_note,
        skipped=train_set.skipped + val_set.skipped,
    )


def load_bundle_split(
    path: Path, spec: str, split: str, *, image_size: int, channels: int, limit: int | None = None
) -> ImageSet:
    """``split`` of ``spec`` drawn as the bundle at ``path`` drew its own when it trained.

    The bundle's validation fraction and `SPLIT_SEED` make 'val' (and 'test' where a data set has
    no test file) exactly the images it never saw, rather than a differently drawn split.
    """
    return load_dataset(
        spec,
        split=split,
        image_size=image_size,
        channels=channels,
        val_fraction=training_val_fraction(path),
        seed=SPLIT_SEED,
        limit=limit,
    )
