"""Model bundles: one folder per trained model, readable without torch.

A bundle holds::

    config.json            ModelConfig (architecture, image size, latent size, likelihood)
    weights.safetensors    torch weights (only training, evaluation and export need them)
    card.json              how it was made: data spec, exact command, epochs, wall time, metrics,
                           fingerprint = SHA-256 of weights.safetensors
    encoder.onnx           image -> (mean, log-variance)        written by `latentz export`
    decoder.onnx           latent -> image in [0, 1]             written by `latentz export`
    entropy_model.json     integer frequency tables for the codec  written by `latentz export`
    plots/*.png            reconstructions, samples, traversals, interpolation, loss curves

``MODEL`` arguments everywhere accept a bundle name (searched in :func:`bundle_search_path`) or
a path to a bundle folder.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentz.config import ModelConfig, load_model_config

# Writing and hashing live in latentz.files; they are named here too because every bundle writer
# and reader (the codec commands, the server, the tests) reaches them through the bundle module.
from latentz.files import TargetExistsError as TargetExistsError
from latentz.files import atomic_write_bytes as atomic_write_bytes
from latentz.files import atomic_write_json as atomic_write_json
from latentz.files import sha256_file as sha256_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "card.json"
TRAIN_CONFIG_FILE = "train_config.json"
DEFAULT_VAL_FRACTION = 0.1
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
ENTROPY_MODEL_FILE = "entropy_model.json"
HYPERPRIOR_FILE = "hyperprior.safetensors"
"""A rate-distortion (format v2) bundle's integer tables and hyper-decoder, in place of the entropy model."""
PLOTS_DIR = "plots"

PACKAGED_BUNDLES = Path(__file__).parent / "bundles"


class BundleError(FileNotFoundError):
    """A model name or folder that does not hold a usable bundle."""


def bundle_search_path() -> list[Path]:
    """Where bundle names are looked up, first match wins.

    ``$LATENTZ_MODELS`` (colon-separated), then ``~/.cache/latentz/models``, then the bundles
    shipped inside the package.
    """
    paths = [Path(p) for p in os.environ.get("LATENTZ_MODELS", "").split(os.pathsep) if p]
    paths.append(Path.home() / ".cache" / "latentz" / "models")
    paths.append(PACKAGED_BUNDLES)
    return paths


def coding_files(path: Path) -> tuple[str, ...]:
    """The files a bundle needs to encode and decode: the two networks and its entropy coding."""
    tables = HYPERPRIOR_FILE if (path / HYPERPRIOR_FILE).is_file() else ENTROPY_MODEL_FILE
    return (ENCODER_FILE, DECODER_FILE, tables)


def is_bundle(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / CARD_FILE).is_file()


def list_bundles() -> list[Path]:
    """Every installed bundle, one per name (earlier search-path entries shadow later ones)."""
    found: dict[str, Path] = {}
    for root in bundle_search_path():
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if child.is_dir() and is_bundle(child) and child.name not in found:
                found[child.name] = child
    return [found[name] for name in sorted(found)]


def resolve_bundle(model: str | Path) -> Path:
    """Turn a bundle name or folder path into the bundle's folder, with a clear error if absent."""
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        if not is_bundle(candidate):
            raise BundleError(
                f"{candidate} is a folder but not a latentz bundle "
                f"(it needs {CONFIG_FILE} and {CARD_FILE}; train one with `latentz train`)"
            )
        return candidate
    name = str(model)
    for root in bundle_search_path():
        if is_bundle(root / name):
            return root / name
    known = ", ".join(p.name for p in list_bundles()) or "none"
    raise BundleError(f"no model named {name!r} and no bundle folder at that path (installed: {known})")


@dataclass(frozen=True)
class BundleInfo:
    """The torch-free view of a bundle: its folder, architecture and card."""

    path: Path
    config: ModelConfig
    card: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def fingerprint(self) -> str:
        return str(self.card.get("fingerprint", ""))

    def file(self, name: str) -> Path:
        return self.path / name


def read_bundle(model: str | Path) -> BundleInfo:
    path = resolve_bundle(model)
    return BundleInfo(path=path, config=load_model_config(path / CONFIG_FILE), card=read_card(path))


def read_card(path: Path) -> dict[str, Any]:
    """A bundle's card; a card that is not JSON makes the folder an unusable bundle (a `BundleError`)."""
    try:
        return json.loads((path / CARD_FILE).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path / CARD_FILE} is not valid JSON ({error})") from None


def update_card(path: Path, **fields: Any) -> dict[str, Any]:
    """Merge fields into a bundle's card.json (used by export to record parity figures)."""
    card = read_card(path)
    card.update(fields)
    atomic_write_json(path / CARD_FILE, card)
    return card


RESCAN_INTERVAL_S = 2.0
"""Least time between two rescans of the bundle folders asked for by lookups that missed (an unknown
model name or fingerprint): a server's flood of made-up names costs one folder scan per interval."""


class ModelIndex:
    """The installed bundles by name and by file fingerprint: the one lookup the CLI, the runtime
    and the server share, so that "which model made this file" has one answer and one scan.

    A lookup that misses rescans the search path, at most once per ``rescan_interval_s`` (the
    server's 2 s bounds what a flood of made-up names costs; a one-shot CLI process uses 0 and so
    always sees a bundle installed a moment ago). Unreadable bundles are left out and listed in
    `problems` with why.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, rescan_interval_s: float = RESCAN_INTERVAL_S
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._rescan_interval_s = rescan_interval_s
        self._scanned_at = -math.inf
        self._search_path: list[Path] | None = None
        self._infos: dict[str, BundleInfo] = {}
        self.problems: dict[str, tuple[Path, Exception]] = {}
        """Bundles that cannot be used, by name: their folder and the error reading them raised."""
        self.scans = 0
        """How many scans this index has made (what was learnt about a bundle since the last one holds)."""

    def refresh(self) -> None:
        """Rescan the bundle search path now (new bundles appear without a restart)."""
        self._scanned_at = self._clock()
        search_path = bundle_search_path()
        infos: dict[str, BundleInfo] = {}
        problems: dict[str, tuple[Path, Exception]] = {}
        for path in list_bundles():
            try:
                infos[path.name] = read_bundle(path)
            except (OSError, ValueError) as error:  # a broken bundle must not hide the others
                problems[path.name] = (path, error)
        with self._lock:
            self._infos, self.problems, self._search_path = infos, problems, search_path
            self.scans += 1

    def rescan(self) -> bool:
        """Rescan unless the last scan is under the interval old (and the search path is the same);
        whether it rescanned."""
        with self._lock:
            now = self._clock()
            same_path = self._search_path == bundle_search_path()
            if same_path and now - self._scanned_at < self._rescan_interval_s:
                return False
            self._scanned_at = now  # taken: concurrent callers do not scan as well
        self.refresh()
        return True

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._infos)

    def infos(self) -> list[BundleInfo]:
        with self._lock:
            return [self._infos[name] for name in sorted(self._infos)]

    def _current(self) -> bool:
        """Whether the last scan is of today's search path (a changed ``$LATENTZ_MODELS`` rescans)."""
        with self._lock:
            return self._search_path is not None and self._search_path == bundle_search_path()

    def by_name(self, name: str) -> BundleInfo | None:
        """The installed bundle called ``name`` (never a path), rescanning once if unknown."""
        if not self._current():
            self.rescan()
        with self._lock:
            info = self._infos.get(name)
        if info is None and self.rescan():
            with self._lock:
                info = self._infos.get(name)
        return info

    def by_fingerprint(self, prefix: bytes) -> BundleInfo | None:
        """The installed bundle whose fingerprint starts with ``prefix`` (as a .latentz file names it);
        the first by name if several do, rescanning once if none does."""
        wanted = prefix.hex()
        if not self._current():
            self.rescan()
        for attempt in range(2):
            with self._lock:
                matches = [self._infos[name] for name in sorted(self._infos)]
            for info in matches:
                if info.fingerprint.startswith(wanted) and is_bundle(info.path):  # not deleted since
                    return info
            if attempt == 0 and not self.rescan():
                break
        return None


INSTALLED = ModelIndex(rescan_interval_s=0.0)
"""The process's index of installed bundles (the CLI's and `latentz.runtime`'s)."""


def find_by_fingerprint(prefix: bytes) -> BundleInfo | None:
    """The installed bundle whose fingerprint starts with ``prefix`` (as a .latentz file names it)."""
    return INSTALLED.by_fingerprint(prefix)


def training_val_fraction(path: Path) -> float:
    """The validation fraction a bundle was trained with, so its 'val' split (and 'test' where a data
    set has no test file) are the images it never saw rather than a differently drawn split."""
    try:
        return float(
            json.loads((path / TRAIN_CONFIG_FILE).read_text()).get("val_fraction", DEFAULT_VAL_FRACTION)
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_VAL_FRACTION
