"""Data sets named by one spec string, used the same way by the CLI, the API and configs.

Specs:

- ``idx:PATH`` — an IDX image file (gzipped or plain, magic 2051, uint8 ``(N, rows, cols)``).
  Labels are read from the file beside it whose name has ``labels-idx1`` for ``images-idx3``.
  If PATH is a ``train-images`` file and a ``t10k-images`` file sits beside it, that is the test split.
- ``mnist``, ``fashion-mnist`` — found on a search path (see `search_dirs`), never downloaded
  implicitly. ``latentz data download NAME`` fetches them for users who are online.
- ``folder:DIR`` — every JPEG/PNG/WebP/BMP under DIR (recursive, sorted, content-checked).
  Photos are resized keeping the aspect ratio and centre-cropped to a square; unreadable files
  are skipped with a warning and counted. Without ``image_size`` they become 64x64
  (`DEFAULT_FOLDER_SIZE`), RGB unless ``channels=1``. Training decodes a folder once into a
  memory-mapped cache (`latentz.folder_cache`) and reads it batch by batch (``lazy=True``); other
  loads reuse that cache when it is current and otherwise decode just the split they need.

A bare path also works: an existing ``*idx3-ubyte[.gz]`` file is read as ``idx:``, a directory as
``folder:``.

Splits: ``train`` and ``val`` partition the training file with a seeded permutation
(`split_indices`); ``test`` is the official test file when there is one, else the same images
as ``val`` (``source_note`` says which); ``all`` is the whole training file.

Torch-free. Images are uint8 ``(N, H, W, C)``: numpy arrays, or with ``lazy=True`` (folders only)
an `ImageRows` that reads the cached images a batch at a time.
"""

from __future__ import annotations

import functools
import gzip
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latentz import folder_cache, imaging
from latentz.folder_cache import ImageRows

NAMED_DATASETS = ("mnist", "fashion-mnist")
SPLITS = ("train", "val", "test", "all")
FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DEFAULT_FOLDER_SIZE = 64
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
# The largest IDX file we agree to read; the real 60k MNIST is 47 MB uncompressed.
MAX_IDX_BYTES = 2_000_000_000

TRAIN_FILE_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-images-idx3-ubyte",
    "mnist9k-images-idx3-ubyte.gz",
    "mnist9k-images-idx3-ubyte",
)
TEST_FILE_NAMES = ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte")

_REPO_SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
# Searched after $LATENTZ_DATA, in this order. A list so tests can replace it.
DEFAULT_ROOTS: list[Path] = [
    Path("~/.cache/latentz").expanduser(),
    Path("/usr/share/datasets"),
    Path("../shared/data"),  # relative to the current directory, resolved at search time
    _REPO_SHARED_DATA,
]


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


# -- IDX files ----------------------------------------------------------------------------------
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


def _read_idx_with_labels(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
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


# -- named data sets ----------------------------------------------------------------------------
def search_dirs(name: str) -> list[Path]:
    """Every directory where data set ``name`` is looked for, in order."""
    roots: list[Path] = []
    env = os.environ.get("LATENTZ_DATA")
    if env:
        roots.append(Path(env).expanduser())
    roots.extend(DEFAULT_ROOTS)
    seen: set[str] = set()
    dirs = []
    for root in roots:
        directory = (root / name).absolute()
        key = os.path.normpath(directory)
        if key not in seen:
            seen.add(key)
            dirs.append(Path(key))
    return dirs


def _first_existing(directory: Path, names: Iterable[str]) -> Path | None:
    for file_name in names:
        candidate = directory / file_name
        if candidate.is_file():
            return candidate
    return None


def resolve_named(name: str) -> tuple[Path, Path | None]:
    """Find a named data set: (training images file, official test images file or None)."""
    if name not in NAMED_DATASETS:
        raise DatasetError(f"unknown data set {name!r}; named data sets are {', '.join(NAMED_DATASETS)}")
    looked = search_dirs(name)
    for directory in looked:
        train = _first_existing(directory, TRAIN_FILE_NAMES)
        if train is not None:
            return train, _first_existing(directory, TEST_FILE_NAMES)
    places = "\n".join(f"  {directory}" for directory in looked)
    hint = "`latentz data download {0}` (needs internet), or set LATENTZ_DATA to a folder holding {0}/"
    if name == "fashion-mnist":
        hint += ", or `apt-get install dataset-fashion-mnist`"
    raise DatasetError(
        f"data set {name!r} not found. Looked for {' or '.join(TRAIN_FILE_NAMES[::2])} in:\n{places}\n"
        f"Get it with " + hint.format(name)
    )


# -- folders of photos --------------------------------------------------------------------------
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


# -- specs --------------------------------------------------------------------------------------
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


def _convert_idx_images(images: np.ndarray, size: int | None, channels: int) -> np.ndarray:
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


def _check_arguments(split: str, image_size: int | None, channels: int | None, limit: int | None) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if image_size is not None and not 1 <= image_size <= 4096:
        raise DatasetError(f"image_size must be between 1 and 4096, got {image_size}")
    if channels is not None and channels not in (1, 3):
        raise DatasetError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if limit is not None and limit < 0:
        raise DatasetError(f"limit must be non-negative, got {limit}")


def _idx_test_file(train_file: Path) -> Path | None:
    if "train-images" not in train_file.name:
        return None
    candidate = train_file.with_name(train_file.name.replace("train-images", "t10k-images"))
    return candidate if candidate.is_file() else None


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
    _check_arguments(split, image_size, channels, limit)
    kind, argument = parse_spec(spec)
    if kind == "folder":
        return _load_folder(
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
    if kind == "named":
        train_file, test_file = resolve_named(argument)
    else:
        train_file = Path(argument).expanduser()
        test_file = _idx_test_file(train_file)
    images, labels = _read_idx_with_labels(train_file)
    total = len(images)
    if split == "all":
        indices = np.arange(total)
        note = f"all {total} images of {train_file.name}"
    elif split == "test" and test_file is not None:
        images, labels = _read_idx_with_labels(test_file)
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
    converted = _convert_idx_images(images[indices], image_size, channels or native_channels)
    return ImageSet(
        images=converted,
        labels=None if labels is None else labels[indices].copy(),
        spec=spec,
        split=split,
        source_note=note,
    )


def _load_folder(
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
    if kind == "named":
        train_file, test_file = resolve_named(argument)
    else:
        train_file = Path(argument).expanduser()
        test_file = _idx_test_file(train_file)
    images, labels = _read_idx_with_labels(train_file)
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
        test_images, _ = _read_idx_with_labels(test_file)
        info["test_path"] = str(test_file.absolute())
        info["splits"]["test"] = len(test_images)
    return info


# -- downloads ----------------------------------------------------------------------------------
_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_FASHION_MIRRORS = ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",)
# SHA-256 of the original gzip files as published upstream; a mirror serving anything else is refused.
DOWNLOADS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "mnist": (
        _MNIST_MIRRORS,
        {
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
    "fashion-mnist": (
        _FASHION_MIRRORS,
        {
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
    ),
}


def _sha256_of(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(name: str, directory: Path | None = None, timeout_s: float = 60.0) -> Path:
    """Fetch the four standard gzip files of ``name`` over https, checking each SHA-256.

    Files already present with the right checksum are kept. Each file is written to a temporary
    name and moved into place only once verified, so an interrupted download leaves nothing
    half-written that would later be mistaken for data.
    """
    import urllib.error
    import urllib.request

    if name not in DOWNLOADS:
        raise DatasetError(f"cannot download {name!r}; downloadable data sets: {', '.join(DOWNLOADS)}")
    mirrors, files = DOWNLOADS[name]
    target = (directory or Path("~/.cache/latentz").expanduser() / name).absolute()
    target.mkdir(parents=True, exist_ok=True)
    for file_name, expected in files.items():
        destination = target / file_name
        if destination.is_file() and _sha256_of(destination) == expected:
            continue
        partial = destination.with_name(destination.name + ".part")
        failures = []
        for mirror in mirrors:
            url = mirror + file_name
            try:
                with urllib.request.urlopen(url, timeout=timeout_s) as response, partial.open("wb") as out:
                    while block := response.read(1 << 20):
                        out.write(block)
            except (urllib.error.URLError, OSError, TimeoutError) as error:
                failures.append(f"{url}: {getattr(error, 'reason', error)}")
                continue
            if _sha256_of(partial) == expected:
                partial.replace(destination)
                break
            failures.append(f"{url}: checksum mismatch (not the published file)")
        else:
            partial.unlink(missing_ok=True)
            raise DatasetError(
                f"could not download {file_name} for {name} (are you offline?): " + "; ".join(failures)
            )
    return target
