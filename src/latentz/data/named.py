"""Named data sets (``mnist``, ``fashion-mnist``): where they are looked for, and the download.

They are found on a search path (`search_dirs`) and never downloaded implicitly; ``latentz data
download NAME`` fetches them, checking every file against its published SHA-256. Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from latentz.data.sets import DatasetError
from latentz.files import sha256_file

NAMED_DATASETS = ("mnist", "fashion-mnist")

TRAIN_FILE_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-images-idx3-ubyte",
    "mnist9k-images-idx3-ubyte.gz",
    "mnist9k-images-idx3-ubyte",
)
TEST_FILE_NAMES = ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte")

_REPO_SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
# Searched after $LATENTZ_DATA, in this order. A list so tests can replace it.
DEFAULT_ROOTS: list[Path] = [
    Path("~/.cache/latentz").expanduser(),
    Path("/usr/share/datasets"),
    Path("../shared/data"),  # relative to the current directory, resolved at search time
    _REPO_SHARED_DATA,
]


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
        if destination.is_file() and sha256_file(destination) == expected:
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
            if sha256_file(partial) == expected:
                partial.replace(destination)
                break
            failures.append(f"{url}: checksum mismatch (not the published file)")
        else:
            partial.unlink(missing_ok=True)
            raise DatasetError(
                f"could not download {file_name} for {name} (are you offline?): " + "; ".join(failures)
            )
    return target
