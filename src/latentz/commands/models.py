"""`latentz models`: list installed bundles."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from latentz.bundle import ENCODER_FILE, list_bundles, read_bundle


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models_command(
        as_json: bool = typer.Option(False, "--json", help="Print one JSON list instead of a table."),
    ) -> None:
        """List installed model bundles (searched in $LATENTZ_MODELS, ~/.cache, the package)."""
        rows = []
        for path in list_bundles():
            info = read_bundle(path)
            rows.append(
                {
                    "name": info.name,
                    "path": str(path),
                    "arch": info.config.arch,
                    "image": f"{info.config.image_size}x{info.config.image_size}x{info.config.channels}",
                    "latent_dim": info.config.latent_dim,
                    "data": info.card.get("data", ""),
                    "exported": (path / ENCODER_FILE).is_file(),
                    "fingerprint": info.fingerprint[:16],
                }
            )
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        columns = ("name", "arch", "image", "latent_dim", "data", "exported", "fingerprint")
        table = Table(title="latentz models")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(row[column]) for column in columns))
        Console().print(table)
