"""JSON answers rendered in the worker thread that made them, never in the event loop."""

from __future__ import annotations

import base64
import json
from functools import partial
from typing import Any

import numpy as np
from fastapi.responses import Response


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def flat(array: np.ndarray) -> np.ndarray:
    """A latent as the JSON answers carry it: float32 values in C order (`render_json` writes them)."""
    return np.asarray(array, dtype=np.float32).ravel()


JSON_CHUNK_VALUES = 4096
_dumps = partial(json.dumps, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def render_json(content: Any) -> bytes:
    """Compact JSON of ``content``; numpy arrays become lists of numbers, written 4,096 at a time.

    Called in the worker thread that made the answer. ``json.dumps`` of one big list holds the
    interpreter lock throughout (a million floats: about a second), which would stall the event
    loop as surely as running it there; between pieces the thread lets the loop run.
    """
    parts: list[str] = []
    _render(content, parts)
    return "".join(parts).encode()


def _render(value: Any, parts: list[str]) -> None:
    if isinstance(value, np.ndarray):
        flat = value.ravel()
        pieces = (
            _dumps(flat[start : start + JSON_CHUNK_VALUES].astype(np.float64).tolist())[1:-1]
            for start in range(0, flat.size, JSON_CHUNK_VALUES)
        )
        parts.append("[" + ",".join(pieces) + "]")
    elif isinstance(value, dict):
        parts.append("{")
        for index, (key, item) in enumerate(value.items()):
            parts.append(("," if index else "") + _dumps(str(key)) + ":")
            _render(item, parts)
        parts.append("}")
    elif isinstance(value, list | tuple):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _render(item, parts)
        parts.append("]")
    else:
        parts.append(_dumps(value))


def json_answer(content: dict[str, Any]) -> Response:
    """A JSON response whose bytes are rendered now (in the worker thread that calls this)."""
    return Response(render_json(content), media_type="application/json")
