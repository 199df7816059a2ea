"""The models this server offers: looked up by exact name or file fingerprint, loaded once.

Names from URLs are only ever matched against installed bundle names, never used as paths, so
``/api/models/..%2F..%2Fetc`` cannot reach outside the bundle folders.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latentz import choice, runtime
from latentz.bundle import (
    DECODER_FILE,
    ENCODER_FILE,
    ENTROPY_MODEL_FILE,
    HYPERPRIOR_FILE,
    RESCAN_INTERVAL_S,
    BundleInfo,
    ModelIndex,
    coding_files,
)
from latentz.codec import FINGERPRINT_BYTES, Header
from latentz.server.errors import ApiError

log = logging.getLogger("latentz.server")

SERVED_FILES = (ENCODER_FILE, DECODER_FILE, ENTROPY_MODEL_FILE, HYPERPRIOR_FILE)
"""What the browser may fetch from a bundle; weights and checkpoints stay private."""


def finite_json(value: Any) -> Any:
    """Replace NaN and infinities (valid in Python's JSON, not in the standard) by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(item) for item in value]
    return value


class ModelRegistry:
    """The server's view of `latentz.bundle.ModelIndex`: its lookups as API answers (404 for an unknown
    name, 409 for a model not exported or a fingerprint no model has), runtimes from the process's one
    cache (`latentz.runtime.runtime_for`), and the model list's summaries."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.index = ModelIndex(clock=clock, rescan_interval_s=RESCAN_INTERVAL_S)
        self._load_problems: dict[str, str] = {}
        self._load_problems_scan = 0

    @property
    def problems(self) -> dict[str, str]:
        """Bundles that cannot be used, by name, with why (no paths: `GET /api/health` shows them)."""
        unreadable = {
            name: f"unreadable bundle: {_without_paths(error, path)}"
            for name, (path, error) in self.index.problems.items()
        }
        current = self._load_problems_scan == self.index.scans  # a rescan forgets them, as it retries
        return {**unreadable, **(self._load_problems if current else {})}

    def refresh(self) -> None:
        """Rescan the bundle search path now (new bundles appear without a restart)."""
        self.index.refresh()
        for path, error in self.index.problems.values():
            log.warning("unreadable bundle at %s: %s", path, error)

    def rescan(self) -> bool:
        """Rescan unless the last scan is under `RESCAN_INTERVAL_S` old; whether it rescanned."""
        return self.index.rescan()

    def names(self) -> list[str]:
        return self.index.names()

    def info(self, name: str) -> BundleInfo:
        info = self.index.by_name(name)
        if info is None:
            installed = self.names()
            shown = name if len(name) <= 80 else name[:80] + "..."
            raise ApiError(
                404,
                f"no model named {shown!r} is installed (installed: {', '.join(installed) or 'none'})",
                "unknown_model",
                installed=installed,
            )
        return info

    @staticmethod
    def missing_files(info: BundleInfo) -> list[str]:
        return [name for name in coding_files(info.path) if not info.file(name).is_file()]

    def runtime(self, name: str) -> runtime.ModelRuntime:
        """The shared runtime of an exported model; 404 if unknown, 409 if not exported."""
        return self._runtime(self.info(name))

    def _runtime(self, info: BundleInfo) -> runtime.ModelRuntime:
        missing = self.missing_files(info)
        if missing:
            raise ApiError(
                409,
                f"model {info.name!r} cannot run here: {', '.join(missing)} missing; run "
                f"`latentz export {info.name}`",
                "model_not_exported",
                missing=missing,
            )
        return runtime.runtime_for(info)

    def for_header(self, header: Header) -> runtime.ModelRuntime:
        """The installed model whose fingerprint the file carries; 409 naming the fingerprint if none."""
        info = self.index.by_fingerprint(header.fingerprint)
        if info is not None:
            return self._runtime(info)
        wanted = header.fingerprint.hex()
        installed = self.names()
        raise ApiError(
            409,
            f"this file was made by a model with fingerprint {wanted}, and no installed model has it "
            f"(installed: {', '.join(installed) or 'none'}); the sender must share that model's bundle",
            "unknown_fingerprint",
            file_fingerprint=wanted,
            installed=installed,
        )

    def preload(self) -> list[str]:
        """Create every exported model's sessions now, so the first request does not pay for it."""
        loaded = []
        for name in self.names():
            info = self.info(name)
            if self.missing_files(info):
                continue
            try:
                model = self.runtime(name)
                model.preload()
                loaded.append(name)
            except Exception as error:  # one broken bundle must not stop the server
                log.warning("could not load model %s: %s", name, error)
                if self._load_problems_scan != self.index.scans:
                    self._load_problems, self._load_problems_scan = {}, self.index.scans
                self._load_problems[name] = f"could not load: {_without_paths(error, info.path)}"
        return loaded

    def encoding_infos(self) -> list[BundleInfo]:
        """The installed models this server can encode with and show (every browser file present):
        the candidates of `latentz.choice`'s rule for ``POST /api/encode``."""
        return [info for info in self.index.infos() if not self.missing_files(info)]

    def summary(self, info: BundleInfo) -> dict[str, Any]:
        """What the model list shows: enough for a page to pick and load a model, and the quality
        to start it at (`latentz.choice.recommended_quality`, the same as `latentz encode`'s)."""
        config = info.config
        card = info.card
        missing = self.missing_files(info)
        recommended = choice.recommended_quality(config)
        base = f"/api/models/{info.name}/files"
        return finite_json(
            {
                "name": info.name,
                "fingerprint": info.fingerprint,
                "file_fingerprint": info.fingerprint[: 2 * FINGERPRINT_BYTES],
                "arch": config.arch,
                "image_size": config.image_size,
                "channels": config.channels,
                "latent_dim": config.latent_dim,
                "latent_shape": list(config.latent_shape()),
                "fully_convolutional": config.fully_convolutional,
                "recommended_quality": recommended.quality,
                "recommended_quality_reason": recommended.reason,
                "data": card.get("data", ""),
                "metrics": card.get("metrics", {}),
                "exported": not missing,
                "missing_files": missing,
                "entropy_model_id": (card.get("entropy_model") or {}).get("id"),
                "files": {
                    "encoder": f"{base}/{ENCODER_FILE}",
                    "decoder": f"{base}/{DECODER_FILE}",
                    "entropy_model": f"{base}/{ENTROPY_MODEL_FILE}",
                },
            }
        )

    def detail(self, info: BundleInfo) -> dict[str, Any]:
        from latentz.config import to_dict

        return finite_json({**self.summary(info), "config": to_dict(info.config), "card": info.card})

    def file_path(self, name: str, filename: str) -> Path:
        info = self.info(name)
        if filename not in SERVED_FILES:
            raise ApiError(
                404,
                f"{filename!r} is not served; a bundle offers {', '.join(SERVED_FILES)}",
                "not_found",
            )
        path = info.file(filename)
        if not path.is_file():
            raise ApiError(
                409,
                f"model {name!r} has no {filename}; run `latentz export {name}`",
                "model_not_exported",
                missing=[filename],
            )
        return path


def _without_paths(error: Exception, bundle: Path) -> str:
    """An error message fit for strangers: the bundle's folder (and where it is) becomes its name."""
    return str(error).replace(str(bundle.resolve()), bundle.name).replace(str(bundle), bundle.name)
