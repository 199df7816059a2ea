"""`latentz data`: inspect data set specs and download the named ones."""

from __future__ import annotations

import json

import typer

from latentz.commands import fail, user_command


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(
        help="Inspect data sets (mnist, fashion-mnist, idx:PATH, folder:DIR) and download the named ones.",
        no_args_is_help=True,
    )
    app.add_typer(data_app, name="data")

    @data_app.command("info")
    @user_command
    def info_command(
        spec: str = typer.Argument(..., help="mnist, fashion-mnist, idx:PATH or folder:DIR"),
        val_fraction: float = typer.Option(
            0.1, "--val-fraction", help="Share of the training file held out."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the train/val split."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    ) -> None:
        """Show what a data spec resolves to: files, image count, native shape and split sizes."""
        from latentz.data import DatasetError, describe

        try:
            info = describe(spec, val_fraction=val_fraction, seed=seed)
        except DatasetError as error:
            fail(str(error))
        if as_json:
            typer.echo(json.dumps(info, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"latentz data info {spec}", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        for key, value in info.items():
            if key == "splits":
                value = ", ".join(f"{split} {count}" for split, count in value.items())
            table.add_row(key, str(value))
        Console().print(table)

    @data_app.command("download")
    @user_command
    def download_command(
        name: str = typer.Argument(..., help="mnist or fashion-mnist"),
    ) -> None:
        """Download MNIST or Fashion-MNIST (4 gzip files, SHA-256 checked) into ~/.cache/latentz/NAME."""
        from latentz.data import DatasetError, download

        try:
            target = download(name)
        except DatasetError as error:
            fail(str(error))
        typer.echo(f"{name} is ready in {target}")
