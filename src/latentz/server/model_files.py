"""Each model's networks for the browser: a bundle's own files, and lean copies (int8 or float16 weights,
`latentz.browser_models`), each offered only if its outputs stay within the module's tolerance of the
original's; every file with a content version for its URL (see `latentz.server.assets`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from latentz import browser_models
from latentz.bundle import DECODER_FILE, ENCODER_FILE, BundleInfo
from latentz.server.assets import PAYLOADS, Payload, file_payload, file_stamp, file_version
from latentz.server.errors import ApiError
from latentz.server.registry import SERVED_FILES

log = logging.getLogger("latentz.server")

LEAN_FILES: dict[str, tuple[str, browser_models.Precision]] = {
    "encoder.int8.onnx": (ENCODER_FILE, "int8"),
    "decoder.int8.onnx": (DECODER_FILE, "int8"),
    "decoder.fp16.onnx": (DECODER_FILE, "fp16"),
}
"""Lean copies a page may load; the explorer takes int8 (smallest), the receiver fp16 (its pixels
stay within a grey level of `latentz decode`'s)."""
SPATIAL_LEAN_FILES = ("decoder.fp16.onnx",)
"""Photo models are only decoded in the browser (the receiver)."""


def file_key(filename: str) -> str:
    """The key of a file in /api/models' ``files``: encoder, decoder_int8, entropy_model, ..."""
    return filename.removesuffix(".onnx").removesuffix(".json").replace(".", "_")


@dataclass(frozen=True)
class LeanCopy:
    """A lean network, or why it is not offered."""

    payload: Payload | None
    error_grey_levels: float | None
    reason: str = ""


class ModelFiles:
    """The files each model offers the browser, each with a content version for its URL.

    ``source(info, filename)`` is a bundle's own file (raising the registry's 404/409), called so
    that what may be served is decided in one place (`latentz.server.registry`).
    """

    def __init__(self, source: Callable[[str, str], Path]) -> None:
        self._source = source

    def offered(self, info: BundleInfo) -> tuple[str, ...]:
        return SPATIAL_LEAN_FILES if info.config.fully_convolutional else tuple(LEAN_FILES)

    def lean(self, info: BundleInfo, filename: str) -> LeanCopy:
        """The lean copy, made on first use and kept for this version of its bundle's files."""
        source_name, precision = LEAN_FILES[filename]
        source = self._source(info.name, source_name)
        decoder = self._source(info.name, DECODER_FILE)
        stamp = (file_stamp(source), file_stamp(decoder), browser_models.CONVERTER_VERSION)

        def make() -> LeanCopy:
            original = source.read_bytes()
            try:
                lean = browser_models.lean_model(original, precision)
                if source_name == DECODER_FILE:
                    errors = browser_models.output_error(
                        original, info.config.latent_shape(), lean_decoder=lean
                    )
                else:
                    errors = browser_models.output_error(
                        decoder.read_bytes(), info.config.latent_shape(), lean_encoder=lean, encoder=original
                    )
            except Exception as error:  # a network this module cannot rewrite or run: serve the original
                log.warning("no %s copy of %s/%s: %s", precision, info.name, source_name, error)
                return LeanCopy(None, None, f"it could not be made ({type(error).__name__})")
            error = max(errors.values())
            tolerance = browser_models.TOLERANCE_GREY_LEVELS[precision]
            if error > tolerance:
                log.info(
                    "%s/%s: no %s copy, it is %.2f grey levels off", info.name, filename, precision, error
                )
                return LeanCopy(
                    None, error, f"its images differ by {error:.1f} grey levels (> {tolerance:g})"
                )
            return LeanCopy(Payload.of(lean, "application/octet-stream"), error)

        return PAYLOADS.get(("lean", str(source), filename), stamp, make)

    def payload(self, info: BundleInfo, filename: str) -> Payload:
        """A servable file of the model: its own, or a lean copy it offers (404 otherwise)."""
        if filename in LEAN_FILES and filename in self.offered(info):
            copy = self.lean(info, filename)
            if copy.payload is None:
                raise ApiError(404, f"{info.name} offers no {filename}: {copy.reason}", "not_found")
            return copy.payload
        if filename in LEAN_FILES:
            message = f"{info.name} offers no {filename}: of a photo model the browser runs only the decoder"
            raise ApiError(404, message, "not_found")
        if filename not in SERVED_FILES:
            shown = filename if len(filename) <= 80 else filename[:80] + "..."
            offered = ", ".join((*SERVED_FILES, *self.offered(info)))
            raise ApiError(404, f"{shown!r} is not served; {info.name} offers {offered}", "not_found")
        return file_payload(self._source(info.name, filename))

    def urls(self, info: BundleInfo, own_files: tuple[str, ...]) -> dict[str, str]:
        """``files`` of /api/models: a versioned URL of each file, lean copies included where offered."""
        base = f"/api/models/{info.name}/files"
        urls = {}
        for filename in own_files:
            path = info.file(filename)
            if path.is_file():
                urls[file_key(filename)] = f"{base}/{file_version(path)}/{filename}"
            else:  # not exported yet: the unversioned URL answers with the 409 that says so
                urls[file_key(filename)] = f"{base}/{filename}"
        if all(info.file(name).is_file() for name in (ENCODER_FILE, DECODER_FILE)):
            for filename in self.offered(info):
                copy = self.lean(info, filename)
                if copy.payload is not None:
                    urls[file_key(filename)] = f"{base}/{copy.payload.version}/{filename}"
        return urls

    def browser_decoder(self, info: BundleInfo) -> str:
        """The decoder the receiver loads: the float16 copy when offered, else the bundle's own."""
        urls = self.urls(info, (DECODER_FILE,))
        return urls.get("decoder_fp16", urls["decoder"])
