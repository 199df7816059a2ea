"""Rate targets: encode at the quality that fits a byte budget, or reaches a PSNR.

Torch-free: it runs on a runtime model (`latentz.runtime.load` / `runtime_for`), anything with
``compress(image, quality=q) -> bytes`` and ``decompress(bytes) -> np.ndarray``. Quality is an
integer 0..100 and the rate grows with it, so the search bisects over qualities (about seven
encodes); the point it settles on is checked again, so a model whose rate is not strictly
monotonic never returns a file that misses a target it reports as met.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from latentz import metrics
from latentz.codec import CodecSettingError

LOWEST, HIGHEST = 0, 100


@dataclass(frozen=True)
class TargetResult:
    """The file a target search chose and what it reached."""

    data: bytes
    quality: int
    bytes: int
    psnr: float
    met: bool
    target: str
    """``"bytes"`` or ``"psnr"``: which target was asked for."""
    goal: float
    """The number asked for: a byte budget or a PSNR in dB."""
    message: str

    def record(self) -> dict[str, Any]:
        """The result as JSON answers give it (without the file)."""
        return {
            "target": {"kind": self.target, "value": self.goal},
            "quality": self.quality,
            "reached": {"bytes": self.bytes, "psnr": _finite(self.psnr)},
            "met": self.met,
            "message": self.message,
        }


def _finite(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None


def check_targets(
    target_bytes: float | None, target_psnr: float | None, quality: int | None = None
) -> tuple[str, float] | None:
    """Which target was asked for, checked: ``("bytes", N)``, ``("psnr", X)`` or None for neither.

    Raises `CodecSettingError` for both, for either with a quality, or for a value out of range.
    """
    if target_bytes is not None and target_psnr is not None:
        raise CodecSettingError("give a byte target or a PSNR target, not both")
    if target_bytes is None and target_psnr is None:
        return None
    if quality is not None:
        raise CodecSettingError("give a quality or a target (bytes or PSNR), not both")
    if target_bytes is not None:
        if isinstance(target_bytes, bool) or not float(target_bytes).is_integer() or target_bytes < 1:
            raise CodecSettingError(
                f"the byte target must be a whole number of bytes, 1 or more, got {target_bytes!r}"
            )
        return "bytes", int(target_bytes)
    value = float(target_psnr)  # type: ignore[arg-type]
    if not math.isfinite(value) or value <= 0:
        raise CodecSettingError(f"the PSNR target must be a positive number of dB, got {target_psnr!r}")
    return "psnr", value


def _bisect(good: Callable[[int], bool], want_highest: bool) -> int:
    """The highest quality where ``good`` holds (``want_highest``: it holds below some point) or the
    lowest (it holds above some point). Whether it holds at the answer is the caller's to check."""
    low, high = LOWEST, HIGHEST
    while low < high:
        if want_highest:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if good(middle) else (low, middle - 1)
        else:
            middle = (low + high) // 2
            low, high = (low, middle) if good(middle) else (middle + 1, high)
    return low


class _Coder:
    """Encodes (and decodes, for PSNR) each quality once, remembering the results."""

    def __init__(self, model: Any, image: np.ndarray) -> None:
        self.model, self.image = model, np.asarray(image)
        self.files: dict[int, bytes] = {}
        self.psnrs: dict[int, float] = {}

    def file(self, quality: int) -> bytes:
        if quality not in self.files:
            self.files[quality] = self.model.compress(self.image, quality=quality)
        return self.files[quality]

    def psnr(self, quality: int) -> float:
        if quality not in self.psnrs:
            decoded = np.asarray(self.model.decompress(self.file(quality)))
            self.psnrs[quality] = metrics.psnr(self.image, decoded)
        return self.psnrs[quality]


def _search_bytes(coder: _Coder, budget: int) -> tuple[int, bool]:
    fits = lambda q: len(coder.file(q)) <= budget  # noqa: E731
    quality = _bisect(fits, want_highest=True)
    while quality > LOWEST and not fits(quality):  # the final check: step down until it fits
        quality -= 1
    return quality, fits(quality)


def _search_psnr(coder: _Coder, goal: float) -> tuple[int, bool]:
    reaches = lambda q: coder.psnr(q) >= goal  # noqa: E731
    quality = _bisect(reaches, want_highest=False)
    while quality < HIGHEST and not reaches(quality):  # the final check: step up until it reaches
        quality += 1
    return quality, reaches(quality)


def _message(kind: str, goal: float, quality: int, size: int, psnr: float, met: bool) -> str:
    """E.g. 'quality 43: 1,987 bytes (target 2,000), 31.2 dB.' and, when missed, why."""
    if kind == "bytes":
        reached = f"quality {quality}: {size:,} bytes (target {int(goal):,}), {psnr:.1f} dB"
        missed = "even the lowest quality is bigger than the target"
    else:
        reached = f"quality {quality}: {size:,} bytes, {psnr:.1f} dB (target {goal:.1f} dB)"
        missed = "even the highest quality misses the target"
    return f"{reached}." if met else f"{reached}; {missed}."


def encode_to_target(
    model: Any, image: np.ndarray, *, target_bytes: int | None = None, target_psnr: float | None = None
) -> TargetResult:
    """Encode ``image`` (uint8, at the model's size: see ``model.prepare``) at the quality that meets
    the one target given: the highest quality whose file is at most ``target_bytes`` bytes, or the
    lowest whose decoded PSNR against ``image`` is at least ``target_psnr`` dB.

    A target that cannot be met gives quality 0's file (bytes) or quality 100's (PSNR) with
    ``met`` False. Raises `CodecSettingError` unless exactly one target is given, in range.
    """
    checked = check_targets(target_bytes, target_psnr)
    if checked is None:
        raise CodecSettingError("give a byte target or a PSNR target")
    kind, goal = checked
    coder = _Coder(model, image)
    quality, met = _search_bytes(coder, int(goal)) if kind == "bytes" else _search_psnr(coder, goal)
    data = coder.file(quality)
    psnr = coder.psnr(quality)
    message = _message(kind, goal, quality, len(data), psnr, met)
    return TargetResult(data, quality, len(data), psnr, met, kind, goal, message)
