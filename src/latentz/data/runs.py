"""The images of a training run, and the same split of them for the bundle it became.

A run's train and validation images depend only on its `TrainConfig` (the data spec, the model's
image size and channels, ``val_fraction`` and ``max_train_images``) and on `SPLIT_SEED`, never on
the training seed: `latentz eval`, `latentz rd` and `latentz export` redraw exactly the split the
run trained and validated on. Torch-free.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentz.bundle import BundleInfo, training_val_fraction
from latentz.config import ConfigError, TrainConfig
from latentz.data.named import NAMED_DATASETS
from latentz.data.sets import DatasetError, ImageSet
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


def _training_folders(info: BundleInfo) -> list[Path]:
    """Folders a card's relative data path may be relative to, most likely first: the folder
    `latentz train` ran in (the bundle's path less the ``-o`` it was given, when that matches), then
    each folder above the bundle (the checkout it ships in)."""
    bundle = info.path.resolve()
    folders: list[Path] = []
    command = [str(part) for part in info.card.get("command") or []]
    for flag, value in itertools.pairwise(command):
        out = Path(value)
        parts = out.parts
        relative = not out.is_absolute() and 0 < len(parts) < len(bundle.parts)
        if flag in ("-o", "--out") and relative and bundle.parts[-len(parts) :] == parts:
            folders.append(bundle.parents[len(parts) - 1])
    return folders + [folder for folder in bundle.parents if folder not in folders]


def card_data_spec(info: BundleInfo) -> tuple[str, str]:
    """The model's own data spec from its card, usable from any folder, and a note saying where it
    was found.

    Cards record the spec as given to `latentz train`, so a relative path is relative to the folder
    training ran in: tried from the current folder first, then from the folders above the bundle.
    """
    spec = str(info.card.get("data") or "")
    if not spec:
        raise DatasetError(f"{info.name}'s card names no data set; pass --data SPEC")
    if spec in NAMED_DATASETS:
        return spec, f"{spec} (from {info.name}'s card)"
    prefix, argument = "", spec
    for kind in ("idx", "folder"):
        if spec.startswith(kind + ":"):
            prefix, argument = kind + ":", spec[len(kind) + 1 :]
    path = Path(argument).expanduser()
    if path.exists():
        return spec, f"{spec} (from {info.name}'s card)"
    if not path.is_absolute():
        for folder in _training_folders(info):
            if (folder / path).exists():
                found = (folder / path).resolve()
                return f"{prefix}{found}", f"{spec} (from {info.name}'s card), found at {found}"
    raise DatasetError(
        f"{argument}: no such file or folder. The path comes from the card of {info.name} (its "
        f"training data, relative to the folder it was trained in) and is neither here nor beside the "
        f"bundle ({info.path}); pass --data SPEC to measure on other images (idx:FILE, folder:DIR, ...)"
    )
