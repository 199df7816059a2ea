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
import os
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
    return json.loads((path / CARD_FILE).read_text())


def update_card(path: Path, **fields: Any) -> dict[str, Any]:
    """Merge fields into a bundle's card.json (used by export to record parity figures)."""
    card = read_card(path)
    card.update(fields)
    atomic_write_json(path / CARD_FILE, card)
    return card


def find_by_fingerprint(prefix: bytes) -> BundleInfo | None:
    """The installed bundle whose fingerprint starts with ``prefix`` (as a .latentz file names it)."""
    wanted = prefix.hex()
    for path in list_bundles():
        try:
            info = read_bundle(path)
        except (OSError, ValueError):
            continue
        if info.fingerprint.startswith(wanted):
            return info
    return None


def training_val_fraction(path: Path) -> float:
    """The validation fraction a bundle was trained with, so its 'val' split (and 'test' where a data
    set has no test file) are the images it never saw rather than a differently drawn split."""
    try:
        return float(
            json.loads((path / TRAIN_CONFIG_FILE).read_text()).get("val_fraction", DEFAULT_VAL_FRACTION)
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_VAL_FRACTION
