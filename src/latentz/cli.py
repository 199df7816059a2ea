"""The `latentz` command line: every module in latentz.commands registers its commands here."""

from __future__ import annotations

import importlib
import pkgutil

import typer

import latentz
import latentz.commands

app = typer.Typer(
    name="latentz",
    help="Train image VAEs, explore their latent space, and use them as a learned codec.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(wanted: bool) -> None:
    """Eager, so `latentz --version` answers before click asks for a command."""
    if wanted:
        typer.echo(f"latentz {latentz.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Train image VAEs, explore their latent space, and use them as a learned codec."""


def _register_all() -> None:
    for module_info in sorted(pkgutil.iter_modules(latentz.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"latentz.commands.{module_info.name}")
        module.register(app)


_register_all()
