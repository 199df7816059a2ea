"""Folders of photos: every JPEG/PNG/WebP/BMP under a folder, decoded once into a cache or per split.

Photos are resized keeping the aspect ratio and centre-cropped to a square; unreadable files are
skipped with a warning and counted. Training reads a folder batch by batch from its memory-mapped
cache (`latentz.folder_cache`, ``lazy=True``); other loads reuse that cache when it is current and
otherwise decode just the split they need. Torch-free.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from latentz import folder_cache, imaging
from latentz.data.sets import DatasetError, ImageSet, split_indices

FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DEFAULT_FOLDER_SIZE = 64


def list_image_files(directory: Path) -> list[Path]:
    """Candidate photos under ``directory`` (recursive, by extension, hidden files skipped), sorted."""
    if not directory.exists():
        raise DatasetError(f"{directory}: no such folder")
    if not directory.is_dir():
        raise DatasetError(f"{directory}: not a folder (use idx:PATH for an IDX file)")
    files = [
        path
        for path in directory.rglob("*")
        if path.suffix.lower() in FOLDER_EXTENSIONS
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(directory).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(directory).as_posix())


def _decode_files(
    files: list[Path], size: int, channels: int, limit: int | None
) -> tuple[np.ndarray, int, list]:
    """Decode photos in order, skipping (with a warning) those that fail, until ``limit`` are read."""
    arrays: list[np.ndarray] = []
    used: list[Path] = []
    skipped = 0
    for path in files:
        if limit is not None and len(arrays) >= limit:
            break
        try:
            arrays.append(imaging.load_array(path, size, channels))
            used.append(path)
        except imaging.ImageError as error:
            skipped += 1
            warnings.warn(f"skipping unreadable image: {error}", stacklevel=3)
    images = np.stack(arrays) if arrays else np.zeros((0, size, size, channels), dtype=np.uint8)
    return images, skipped, used


def _folder_cache(
    directory: Path, files: list[Path], size: int, channels: int, *, build: bool, progress: bool
) -> folder_cache.FolderCache | None:
    """The folder's current cache; built now if ``build`` and there is none."""
    try:
        cache = folder_cache.open_cache(directory, files, size, channels)
        if cache is None and build:
            cache = folder_cache.build_cache(directory, files, size, channels, progress=progress)
    except folder_cache.CacheError as error:
        raise DatasetError(str(error)) from None
    except FileNotFoundError as error:
        raise DatasetError(f"{directory}: a file disappeared while listing the folder ({error})") from None
    return cache


def load_folder(
    spec: str,
    directory: Path,
    split: str,
    image_size: int | None,
    channels: int | None,
    val_fraction: float,
    seed: int,
    limit: int | None,
    *,
    lazy: bool = False,
    progress: bool = False,
) -> ImageSet:
    """Split the sorted file list first, then take the chosen split's images from the cache or decode them."""
    files = list_image_files(directory)
    if not files:
        raise DatasetError(f"{directory}: no JPEG/PNG/WebP/BMP files found (searched recursively)")
    size = image_size or DEFAULT_FOLDER_SIZE
    total = len(files)
    if split == "all":
        chosen = files
        note = f"all {total} photos in {directory}"
    else:
        train_indices, val_indices = split_indices(total, val_fraction, seed)
        indices = train_indices if split == "train" else val_indices
        chosen = [files[i] for i in indices]
        held_out = f"held-out {val_fraction:.0%} of {total} photos in {directory} (seed {seed})"
        note = {
            "train": f"train: the other {len(train_indices)} photos; val: {held_out}",
            "val": f"val: {held_out}",
            "test": f"test: folders have no official test set, using the validation split: {held_out}",
        }[split]
    build = lazy and limit is None
    cache = _folder_cache(directory, files, size, channels or 3, build=build, progress=progress)
    if cache is None:
        images, skipped, used = _decode_files(chosen, size, channels or 3, limit)
    else:
        rows, skipped, used = cache.select(chosen, limit)
        images = rows if lazy else np.asarray(rows)
    if len(images) == 0 and (limit is None or limit > 0):
        if chosen:
            raise DatasetError(
                f"{directory}: none of the {len(chosen)} image files of the {split} split could be read"
            )
        if split != "all":
            raise DatasetError(
                f"{directory}: the {split} split is empty ({total} photos, val_fraction {val_fraction})"
            )
    if limit is not None:
        note += f"; first {len(images)} used (limit {limit})"
    if skipped:
        note += f"; {skipped} unreadable file(s) skipped"
    note += f"; resized to {size}x{size} keeping aspect, centre-cropped"
    return ImageSet(
        images=images, labels=None, spec=spec, split=split, skipped=skipped, source_note=note, files=used
    )


def load_photos(
    directory: Path, split: str, val_fraction: float, seed: int, limit: int | None = None
) -> tuple[list[np.ndarray], list[Path]]:
    """One split of a photo folder at the photos' own sizes (RGB uint8 ``(H, W, 3)`` each), drawn as
    `load_folder` draws it, for models that train on crops and are measured on whole photos."""
    files = list_image_files(directory)
    if not files:
        raise DatasetError(f"{directory}: no JPEG/PNG/WebP/BMP files found (searched recursively)")
    train_indices, val_indices = split_indices(len(files), val_fraction, seed)
    chosen = [files[i] for i in (train_indices if split == "train" else val_indices)]
    photos, used = [], []
    for path in chosen:
        if limit is not None and len(photos) >= limit:
            break
        try:
            photos.append(imaging.load_array(path, None, 3))
            used.append(path)
        except imaging.ImageError as error:
            warnings.warn(f"skipping unreadable image: {error}", stacklevel=2)
    if not photos:
        raise DatasetError(f"{directory}: the {split} split has no readable photos")
    return photos, used
