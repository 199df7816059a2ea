"""One module per command group; each exposes ``register(app)``.

Modules import heavy dependencies (torch, onnxruntime) inside their command functions, so that
`latentz --help` and the torch-free commands (encode, decode, serve) start fast.
"""

from __future__ import annotations


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message tells the user everything: printed as ``error: ...``, no traceback.

    Built lazily so `latentz --help` does not import numpy, Pillow or onnxruntime.
    """
    from latentz.bundle import BundleError
    from latentz.codec import EntropyModelError, LatentzFormatError
    from latentz.config import ConfigError
    from latentz.imaging import ImageError
    from latentz.runtime import ModelRuntimeError

    return (
        BundleError,
        ConfigError,
        EntropyModelError,
        ImageError,
        LatentzFormatError,
        ModelRuntimeError,
        OSError,
        ValueError,
    )
