"""One module per command group; each exposes ``register(app)``.

Modules import heavy dependencies (torch, onnxruntime) inside their command functions, so that
`latentz --help` and the torch-free commands (encode, decode, serve) start fast.

Command error handling lives here, once: a command decorated with `user_command` turns the errors
a user can act on (`user_errors`) into one line ``error: ...`` on stderr and exit status 2; any
other exception is a bug and surfaces as a traceback. `fail` is the same line for a command's own
checks.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import NoReturn, ParamSpec, TypeVar

import typer

P = ParamSpec("P")
R = TypeVar("R")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message tells the user everything: printed as ``error: ...``, no traceback.

    The project's own error classes, and the operating system's answers about the user's own files
    (missing, unreadable, a folder where a file was meant); never bare ``ValueError`` or ``OSError``,
    which are bugs until a class says otherwise. Built lazily so `latentz --help` does not import
    numpy, Pillow or onnxruntime.
    """
    from latentz.bundle import BundleError, TargetExistsError
    from latentz.codec import CodecSettingError, EntropyModelError, LatentzFormatError
    from latentz.config import ConfigError
    from latentz.data import DatasetError
    from latentz.imaging import ImageError
    from latentz.runtime import ModelRuntimeError

    return (
        BundleError,
        CodecSettingError,
        ConfigError,
        DatasetError,
        EntropyModelError,
        ImageError,
        LatentzFormatError,
        ModelRuntimeError,
        TargetExistsError,
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
    )


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with ``error: MESSAGE`` on stderr (only rank 0 of a torchrun job says it)."""
    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def user_command(command: Callable[P, R]) -> Callable[P, R]:
    """A command whose user errors end it through `fail` instead of a traceback."""

    @functools.wraps(command)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except user_errors() as error:
            fail(str(error))

    return guarded
