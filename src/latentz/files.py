"""Writing and hashing files safely: the one home of the atomic write and of SHA-256 over a file.

Every file latentz writes for later (bundle files, checkpoints, metrics, the folder cache's index,
coded images) goes through `atomic_write_bytes`: a hidden temporary file beside the target,
fsynced, then renamed into place, so a crash never leaves a half-written file under the final
name. Torch-free and numpy-free: the receive path uses it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

#: Files are read in blocks of this size when hashed, so large weights need no extra memory.
HASH_BLOCK_BYTES = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, streamed so large weights need no extra memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Read once at import: os.umask can only be read by setting it, which is not thread-safe later.
_UMASK = _read_umask()


class TargetExistsError(FileExistsError):
    """An exclusive write found its target already there (made by another input, run or process)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} exists")
        self.path = path


def _link_into_place(tmp: str, path: Path) -> None:
    """Give the finished temporary file its final name only if that name is free, atomically.

    ``os.link`` fails if the target exists, even when another process creates it a moment earlier,
    so two writers can never both think they wrote it. Where hard links are not supported (FAT,
    some network file systems), the name is reserved with ``O_EXCL`` and then replaced.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise TargetExistsError(path) from None
    except OSError:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_UMASK))
        except FileExistsError:
            raise TargetExistsError(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = True) -> None:
    """Write then rename, so a crash never leaves a half-written file under the final name.

    The temporary file is ``.NAME.<random>.tmp`` in the target's folder (what a tidy-up after a
    kill looks for). With ``overwrite=False`` the file is created exclusively: if ``path`` exists
    (or appears while writing) nothing is replaced and `TargetExistsError` is raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; bundles are meant to be shared
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_into_place(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    """`atomic_write_bytes` of ``data`` as indented JSON with a final newline."""
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
