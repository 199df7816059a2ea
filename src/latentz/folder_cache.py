"""A one-time, memory-mapped cache of a photo folder's decoded images.

Decoding and resizing 100k photos takes minutes, and holding them as arrays takes gigabytes of
memory that grows with the folder. The cache pays the decoding once and keeps the pixels on disk:

- ``<root>/<key>.u8`` holds every readable photo, resized to ``size`` x ``size``, as raw uint8
  ``(H, W, C)`` rows in file-listing order;
- ``<root>/<key>.json`` (written last, so its presence means the rows are complete) names the
  folder, the file of each row, and every unreadable file with the reason.

The key hashes the folder's absolute path, every file's relative path, size and modification time,
the image size, the channel count and `CACHE_FORMAT`, so any change to the folder (a photo added,
replaced or touched) means a different key: a fresh cache is built and the one it replaces is
deleted. ``root`` is ``$LATENTZ_CACHE`` or ``~/.cache/latentz/folders``.

The rows file is a plain C-order array, so ``np.memmap(path, np.uint8, "r", shape=(N, H, W, C))``
maps it. Training reads it differently, with one seek and read per run of adjacent rows a batch
needs (`RowsFile`): only the batch lands in the process's memory and the rest stays
in the page cache, so resident memory stays flat however large the folder is. (Mapping the file
instead counts every touched page as resident; on Linux 6.x a batch of 128 random 32x32 rows
mapped 41 MB of large folios, and one epoch over 50k photos left 151 MB mapped.) Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentz import imaging
from latentz.files import atomic_write_bytes

CACHE_FORMAT = 1
CACHE_ENV = "LATENTZ_CACHE"
#: A partial rows file untouched for this long belongs to a build that was killed.
STALE_PARTIAL_S = 600.0
#: Free space kept beyond the cache's own size, so building it never fills a disk to the brim.
SPACE_MARGIN_BYTES = 64 * 1024 * 1024


class CacheError(OSError):
    """The cache cannot be written (no space, read-only folder); the message says what to do."""


def cache_root() -> Path:
    """Where folder caches live: ``$LATENTZ_CACHE`` if set, else ``~/.cache/latentz/folders``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "latentz" / "folders"


def cache_key(directory: Path, files: Sequence[Path], size: int, channels: int) -> str:
    """A hash of everything the cached pixels depend on (stat of every file, not its bytes)."""
    directory = directory.resolve()
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_FORMAT, str(directory), size, channels]).encode())
    for path in files:
        stat = path.stat()
        digest.update(
            f"\n{path.resolve().relative_to(directory).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
        )
    return digest.hexdigest()[:32]


class RowsFile:
    """A uint8 ``(N, H, W, C)`` array stored in a file, read a few rows at a time (not thread-safe)."""

    def __init__(self, path: Path, count: int, size: int, channels: int) -> None:
        self.path = path
        self.shape = (count, size, size, channels)
        self.row_bytes = size * size * channels
        self._file = path.open("rb", buffering=0)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (an index or an array of them) as a new array, one read per adjacent run."""
        wanted = np.asarray(rows, dtype=np.int64)
        flat = wanted.reshape(-1)
        out = np.empty((len(flat), *self.shape[1:]), dtype=np.uint8)
        if len(flat):
            if flat.min() < 0 or flat.max() >= self.shape[0]:
                raise IndexError(f"rows out of range for {self.shape[0]} cached images")
            breaks = np.flatnonzero(np.diff(flat) != 1) + 1
            for start, stop in zip([0, *breaks], [*breaks, len(flat)], strict=True):
                self._read_into(memoryview(out[start:stop]).cast("B"), int(flat[start]) * self.row_bytes)
        return out.reshape(*wanted.shape, *self.shape[1:])

    def _read_into(self, buffer: memoryview, offset: int) -> None:
        self._file.seek(offset)
        while len(buffer):
            done = self._file.readinto(buffer)
            if not done:
                raise OSError(f"{self.path} is shorter than its index says; delete it to rebuild the cache")
            buffer = buffer[done:]


class ImageRows:
    """Selected rows of a `RowsFile`: behaves like a uint8 ``(N, H, W, C)`` array, read lazily.

    Indexing (an int, a slice or an index array) returns a plain numpy array of just those images;
    ``np.asarray(rows)`` materialises all of them, for callers that really want everything in RAM.
    """

    def __init__(self, source: RowsFile, rows: np.ndarray) -> None:
        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), *source.shape[1:])
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            return self[key[0]][(slice(None), *key[1:])]
        return self.source.take(self.rows[key])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        images = self.source.take(self.rows)
        return images if dtype is None else images.astype(dtype)

    def __repr__(self) -> str:
        return f"ImageRows({len(self)} of {self.source.path.name}, shape={self.shape})"


@dataclass
class FolderCache:
    """An opened cache: the mapped rows and, per listed file, its row (or why it was unreadable)."""

    directory: Path
    key: str
    images: RowsFile
    files: list[str]  # relative paths in listing order
    rows: dict[str, int]  # relative path -> row, readable files only
    errors: dict[str, str]  # relative path -> the decoding error, unreadable files only

    def select(self, chosen: Sequence[Path], limit: int | None) -> tuple[ImageRows, int, list[Path]]:
        """The rows of ``chosen`` files in order, up to ``limit`` readable ones, like decoding them.

        Unreadable files among those looked at are warned about and counted, exactly as
        `latentz.data` does when it decodes a folder without a cache.
        """
        selected: list[int] = []
        used: list[Path] = []
        skipped = 0
        for path in chosen:
            if limit is not None and len(selected) >= limit:
                break
            name = path.resolve().relative_to(self.directory).as_posix()
            row = self.rows.get(name)
            if row is None:
                skipped += 1
                warnings.warn(f"skipping unreadable image: {self.errors.get(name, name)}", stacklevel=4)
                continue
            selected.append(row)
            used.append(path)
        return ImageRows(self.images, np.array(selected, dtype=np.int64)), skipped, used


def _paths(root: Path, key: str) -> tuple[Path, Path]:
    return root / f"{key}.u8", root / f"{key}.json"


def open_cache(directory: Path, files: Sequence[Path], size: int, channels: int) -> FolderCache | None:
    """The complete cache for exactly these files and settings, or None if there is none."""
    directory = directory.resolve()
    key = cache_key(directory, files, size, channels)
    rows_path, index_path = _paths(cache_root(), key)
    try:
        index = json.loads(index_path.read_text())
        count = int(index["count"])
        complete = (
            index.get("format") == CACHE_FORMAT
            and rows_path.stat().st_size == count * size * size * channels
            and len(index["files"]) == len(files)
        )
        if not complete:
            return None
        mapped = RowsFile(rows_path, count, size, channels)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, half-deleted or foreign: rebuilt by the caller
    names: list[str] = index["files"]
    return FolderCache(
        directory=directory,
        key=key,
        images=mapped,
        files=names,
        rows={name: row for name, row in zip(names, index["rows"], strict=True) if row >= 0},
        errors=dict(index["errors"]),
    )


def build_cache(
    directory: Path, files: Sequence[Path], size: int, channels: int, *, progress: bool = False
) -> FolderCache:
    """Decode every file once into a new cache (replacing older caches of the folder) and open it.

    Rows are written through an ordinary file (not a writable mapping), then fsynced and renamed
    into place before the index appears, so a killed build leaves nothing that looks complete.
    """
    directory = directory.resolve()
    root = cache_root()
    key = cache_key(directory, files, size, channels)
    rows_path, index_path = _paths(root, key)
    row_bytes = size * size * channels
    _prepare_root(root, key, needed=len(files) * row_bytes)
    names = [path.resolve().relative_to(directory).as_posix() for path in files]
    rows: list[int] = []
    errors: dict[str, str] = {}
    bar = _BuildProgress(progress, len(files), directory, rows_path)
    fd, partial = tempfile.mkstemp(dir=root, prefix=f".{key}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
            for name, path in zip(names, files, strict=True):
                try:
                    pixels = imaging.load_array(path, size, channels)
                except imaging.ImageError as error:
                    errors[name] = str(error)
                    rows.append(-1)
                else:
                    out.write(pixels.tobytes())
                    rows.append(len(rows) - len(errors))
                bar.advance()
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, rows_path)
        index = {
            "format": CACHE_FORMAT,
            "folder": str(directory),
            "image_size": size,
            "channels": channels,
            "count": len(rows) - len(errors),
            "files": names,
            "rows": rows,
            "errors": errors,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_bytes(index_path, json.dumps(index).encode())
    except OSError as error:
        Path(partial).unlink(missing_ok=True)
        raise _cache_write_error(root, error) from None
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    _delete_replaced(root, key, directory, size, channels)
    cache = open_cache(directory, files, size, channels)
    if cache is None:  # the folder changed while it was being read
        raise CacheError(f"{directory} changed while its image cache was being built; run again")
    return cache


def _prepare_root(root: Path, key: str, needed: int) -> None:
    """Create the cache folder, clear this key's leftovers from killed builds, check free space."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _cache_write_error(root, error) from None
    now = time.time()
    for leftover in root.glob(f".{key}.*.tmp"):
        try:
            if now - leftover.stat().st_mtime > STALE_PARTIAL_S:
                leftover.unlink()
        except OSError:
            pass  # another process's live build, or already gone
    free = shutil.disk_usage(root).free
    if free < needed + SPACE_MARGIN_BYTES:
        raise CacheError(
            f"not enough disk space for the image cache in {root}: it needs {needed / 1e6:,.0f} MB "
            f"(+{SPACE_MARGIN_BYTES / 1e6:.0f} MB margin), {free / 1e6:,.0f} MB are free; set "
            f"{CACHE_ENV} to a folder on a disk with room"
        )


def _cache_write_error(root: Path, error: OSError) -> CacheError:
    return CacheError(
        f"cannot write the image cache in {root} ({error.strerror or error}); free some space or set "
        f"{CACHE_ENV} to a writable folder with room"
    )


def _delete_replaced(root: Path, key: str, directory: Path, size: int, channels: int) -> None:
    """Delete the caches this one supersedes: same folder and settings, older contents."""
    for index_path in root.glob("*.json"):
        if index_path.stem == key:
            continue
        try:
            index = json.loads(index_path.read_text())
            same = (index.get("folder"), index.get("image_size"), index.get("channels")) == (
                str(directory),
                size,
                channels,
            )
        except (OSError, ValueError, AttributeError):
            continue
        if same:
            index_path.unlink(missing_ok=True)  # index first: a reader never sees rows without one
            (root / f"{index_path.stem}.u8").unlink(missing_ok=True)


class _BuildProgress:
    """A rich progress bar for the one-time decode, on a terminal; one line otherwise."""

    def __init__(self, enabled: bool, total: int, directory: Path, target: Path) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.console import Console

        console = Console(stderr=True)
        console.print(
            f"caching {total:,} photos of {directory} as {target} (once; reused until the folder changes)",
            highlight=False,
            soft_wrap=True,
        )
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self.bar = Progress(
                "caching", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
            )
            self.task = self.bar.add_task("caching", total=total)
            self.bar.start()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
