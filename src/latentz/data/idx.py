"""IDX files (the MNIST format): read safely, write, convert to uint8 ``(N, H, W, C)``, split.

A file is gunzipped when its first bytes say gzip (never by its name), its header is checked
against its length before any array is made, and it is read at most `MAX_IDX_BYTES`. Labels come
from the ``labels-idx1`` file beside an ``images-idx3`` one; a ``train-images`` file's official test
split is the ``t10k-images`` file beside it. Torch-free.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

from latentz import imaging
from latentz.data.sets import DatasetError, ImageSet, split_indices

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
# The largest IDX file we agree to read; the real 60k MNIST is 47 MB uncompressed.
MAX_IDX_BYTES = 2_000_000_000


def _read_maybe_gzip(path: Path) -> bytes:
    """Read a file, gunzipping when its first bytes say gzip (the name is not trusted)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(2)
            handle.seek(0)
            if head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=handle) as unzipped:
                    data = unzipped.read(MAX_IDX_BYTES + 1)
            else:
                data = handle.read(MAX_IDX_BYTES + 1)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DatasetError(
            f"{path}: is a directory, expected an IDX file (use folder:DIR for photos)"
        ) from None
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DatasetError(f"{path}: corrupt or truncated gzip data ({error})") from None
    if len(data) > MAX_IDX_BYTES:
        raise DatasetError(f"{path}: larger than {MAX_IDX_BYTES:,} bytes uncompressed; refusing to load")
    return data


def _parse_idx(data: bytes, path: Path, expected_magic: int) -> np.ndarray:
    """Validate an IDX header (magic, dimension sizes, payload length) and return the uint8 array."""
    kind = "images" if expected_magic == IDX_IMAGES_MAGIC else "labels"
    if len(data) < 4:
        raise DatasetError(f"{path}: too short to be an IDX {kind} file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DatasetError(
            f"{path}: not an IDX {kind} file (magic number {magic}, expected {expected_magic})"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if kind == "images" and (shape[1] == 0 or shape[2] == 0):
        raise DatasetError(f"{path}: IDX images have a zero dimension {shape}")
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise DatasetError(
            f"{path}: {problem}: header says {shape} = {expected:,} bytes, file has {len(data):,}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


@functools.lru_cache(maxsize=4)
def _read_idx_cached(path: str, mtime_ns: int, size: int, magic: int) -> np.ndarray:
    array = _parse_idx(_read_maybe_gzip(Path(path)), Path(path), magic)
    array.setflags(write=False)
    return array


def read_idx(path: Path, magic: int = IDX_IMAGES_MAGIC) -> np.ndarray:
    """Read an IDX file as a read-only uint8 array, cached so train and val loads decompress once."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    return _read_idx_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, magic)


def labels_path_for(images_path: Path) -> Path | None:
    """The labels file beside an images file (``images-idx3`` -> ``labels-idx1``), if it exists."""
    if "images-idx3" not in images_path.name:
        return None
    candidate = images_path.with_name(images_path.name.replace("images-idx3", "labels-idx1"))
    return candidate if candidate.is_file() else None


def read_idx_with_labels(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    images = read_idx(path, IDX_IMAGES_MAGIC)
    if images.ndim != 3:
        raise DatasetError(f"{path}: expected 3-D IDX images (N, rows, cols), got shape {images.shape}")
    labels_file = labels_path_for(path)
    if labels_file is None:
        return images, None
    labels = read_idx(labels_file, IDX_LABELS_MAGIC)
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetError(
            f"{labels_file}: labels shaped {labels.shape} do not match the {len(images)} images in {path}"
        )
    return images, labels.astype(np.int64)


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz): images 3-D, labels 1-D."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    if compress is None:
        compress = Path(path).suffix == ".gz"
    Path(path).write_bytes(gzip.compress(payload, mtime=0) if compress else payload)


def convert_idx_images(images: np.ndarray, size: int | None, channels: int) -> np.ndarray:
    """(N, H, W) grey IDX digits -> uint8 (N, size, size, channels), resizing only if asked."""
    if size is not None and images.shape[1:] != (size, size):
        from PIL import Image

        images = np.stack(
            [imaging.to_array(Image.fromarray(image, "L"), size, 1)[:, :, 0] for image in images]
        )
    images = images[:, :, :, None]
    if channels == 3:
        images = np.repeat(images, 3, axis=3)
    return np.ascontiguousarray(images)


def official_test_file(train_file: Path) -> Path | None:
    if "train-images" not in train_file.name:
        return None
    candidate = train_file.with_name(train_file.name.replace("train-images", "t10k-images"))
    return candidate if candidate.is_file() else None


def load_idx(
    spec: str,
    train_file: Path,
    test_file: Path | None,
    split: str,
    image_size: int | None,
    channels: int | None,
    val_fraction: float,
    seed: int,
    limit: int | None,
) -> ImageSet:
    """One split of an IDX data set: the training file's seeded split, or the official test file."""
    images, labels = read_idx_with_labels(train_file)
    total = len(images)
    if split == "all":
        indices = np.arange(total)
        note = f"all {total} images of {train_file.name}"
    elif split == "test" and test_file is not None:
        images, labels = read_idx_with_labels(test_file)
        indices = np.arange(len(images))
        note = f"official test set {test_file.name} ({len(images)} images)"
    else:
        train_indices, val_indices = split_indices(total, val_fraction, seed)
        indices = train_indices if split == "train" else val_indices
        held_out = f"held-out {val_fraction:.0%} of {total} in {train_file.name} (seed {seed})"
        if split == "train":
            note = f"train: the other {len(train_indices)} images; val: {held_out}"
        elif split == "val":
            note = f"val: {held_out}"
        else:
            note = f"test: no official test file, using the validation split: {held_out}"
    if limit is not None:
        indices = indices[:limit]
        note += f"; first {len(indices)} used (limit {limit})"
    native_channels = 1
    converted = convert_idx_images(images[indices], image_size, channels or native_channels)
    return ImageSet(
        images=converted,
        labels=None if labels is None else labels[indices].copy(),
        spec=spec,
        split=split,
        source_note=note,
    )
