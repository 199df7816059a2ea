"""Data set specs: one string names a data set for the CLI, the API and configs alike.

``idx:PATH`` (an IDX images file), ``mnist`` / ``fashion-mnist`` (found on the search path of
`latentz.data.named`), ``folder:DIR`` (photos); a bare path works too: an existing
``*idx3-ubyte[.gz]`` file is read as ``idx:``, a directory as ``folder:``. Torch-free.
"""

from __future__ import annotations

from pathlib import Path

from latentz.data.folders import DEFAULT_FOLDER_SIZE, list_image_files, load_folder
from latentz.data.idx import labels_path_for, load_idx, official_test_file, read_idx_with_labels
from latentz.data.named import NAMED_DATASETS, resolve_named
from latentz.data.sets import DatasetError, ImageSet, check_arguments, split_indices


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a spec into (kind, argument): kind is "idx", "named" or "folder"."""
    spec = spec.strip()
    if not spec:
        raise DatasetError("empty data spec; use mnist, fashion-mnist, idx:PATH or folder:DIR")
    if spec in NAMED_DATASETS:
        return "named", spec
    for prefix in ("idx", "folder"):
        if spec.startswith(prefix + ":"):
            argument = spec[len(prefix) + 1 :]
            if not argument:
                raise DatasetError(f"{spec!r}: missing the path after '{prefix}:'")
            return prefix, argument
    path = Path(spec).expanduser()
    if path.is_dir():
        return "folder", spec
    if path.is_file() and "idx3-ubyte" in path.name:
        return "idx", spec
    raise DatasetError(
        f"unknown data spec {spec!r}; use one of: {', '.join(NAMED_DATASETS)}, idx:PATH (IDX images file), "
        f"folder:DIR (folder of photos)"
    )


def idx_files(kind: str, argument: str) -> tuple[Path, Path | None]:
    """The training images file of an ``idx`` or ``named`` spec and its official test file, if any."""
    if kind == "named":
        return resolve_named(argument)
    train_file = Path(argument).expanduser()
    return train_file, official_test_file(train_file)


def load_dataset(
    spec: str,
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    *,
    lazy: bool = False,
    progress: bool = False,
) -> ImageSet:
    """Load one split of the data set named by ``spec`` as uint8 ``(N, H, W, C)`` images.

    ``image_size`` None keeps IDX images at their native size and makes folder photos
    `DEFAULT_FOLDER_SIZE`; ``channels`` None keeps the native count (1 for IDX, 3 for photos).
    ``limit`` keeps the first ``limit`` images of the split, for quick runs.

    ``lazy`` lets a folder's images come back as an `ImageRows` over the folder's memory-mapped
    cache, building the cache first if needed (``progress`` shows a bar meanwhile), so memory
    does not grow with the folder. With a ``limit`` and no cache yet, only the first images are
    decoded, as without ``lazy``: a quick run should not pay for caching 100k photos.
    """
    check_arguments(split, image_size, channels, limit)
    kind, argument = parse_spec(spec)
    if kind == "folder":
        return load_folder(
            spec,
            Path(argument).expanduser(),
            split,
            image_size,
            channels,
            val_fraction,
            seed,
            limit,
            lazy=lazy,
            progress=progress,
        )
    train_file, test_file = idx_files(kind, argument)
    return load_idx(spec, train_file, test_file, split, image_size, channels, val_fraction, seed, limit)


def describe(spec: str, val_fraction: float = 0.1, seed: int = 0) -> dict:
    """What ``spec`` resolves to without decoding photos: files, counts, native shape, split sizes."""
    kind, argument = parse_spec(spec)
    if kind == "folder":
        directory = Path(argument).expanduser()
        files = list_image_files(directory)
        train_indices, val_indices = split_indices(len(files), val_fraction, seed)
        return {
            "spec": spec,
            "kind": "folder",
            "path": str(directory.absolute()),
            "count": len(files),
            "shape": f"(N, {DEFAULT_FOLDER_SIZE}, {DEFAULT_FOLDER_SIZE}, 3) by default: resized, aspect kept",
            "labels": False,
            "splits": {"train": len(train_indices), "val": len(val_indices), "test": "= val"},
            "note": "files are listed by extension; unreadable ones are skipped when loading",
        }
    train_file, test_file = idx_files(kind, argument)
    images, labels = read_idx_with_labels(train_file)
    train_indices, val_indices = split_indices(len(images), val_fraction, seed)
    info: dict = {
        "spec": spec,
        "kind": "named" if kind == "named" else "idx",
        "path": str(train_file.absolute()),
        "labels_path": str(labels_path_for(train_file)) if labels is not None else None,
        "count": len(images),
        "shape": f"(N, {images.shape[1]}, {images.shape[2]}, 1)",
        "labels": labels is not None,
        "splits": {"train": len(train_indices), "val": len(val_indices), "test": "= val"},
    }
    if test_file is not None:
        test_images, _ = read_idx_with_labels(test_file)
        info["test_path"] = str(test_file.absolute())
        info["splits"]["test"] = len(test_images)
    return info
