"""`latentz models`: list installed bundles, where each was found and the fingerprint its files carry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from latentz.bundle import ENCODER_FILE, PACKAGED_BUNDLES, bundle_search_path, list_bundles, read_bundle
from latentz.commands import user_command

#: The fingerprint as a `.latentz` file carries it (its first 4 bytes, see docs/latentz-format.md),
#: so a user can match the table against a decode error message.
SHORT_FINGERPRINT_HEX = 8
USER_CACHE = Path.home() / ".cache" / "latentz" / "models"


def where_found(path: Path) -> str:
    """Which search-path entry holds a bundle: 'packaged', 'cache' or the $LATENTZ_MODELS folder."""
    folder = path.parent.resolve()
    if folder == PACKAGED_BUNDLES.resolve():
        return "packaged"
    if folder == USER_CACHE.resolve():
        return "cache"
    for root in bundle_search_path():
        if root.expanduser().resolve() == folder:
            return str(root)
    return str(path.parent)


def model_rows() -> list[dict[str, Any]]:
    from latentz.choice import is_rate_distortion, recommended_quality

    rows = []
    for path in list_bundles():
        info = read_bundle(path)
        config = info.config
        recommended = recommended_quality(config)
        rows.append(
            {
                "name": info.name,
                "where": where_found(path),
                "path": str(path),
                "arch": "hyperprior" if is_rate_distortion(info) else config.arch,
                "image": f"{config.image_size}x{config.image_size}x{config.channels}",
                "latent_dim": config.latent_dim,
                "data": info.card.get("data", ""),
                "exported": (path / ENCODER_FILE).is_file(),
                "quality": recommended.quality,
                "quality_reason": recommended.reason,
                "fingerprint": info.fingerprint,
                "short_fingerprint": info.fingerprint[:SHORT_FINGERPRINT_HEX],
            }
        )
    return rows


def _latent(row: dict[str, Any]) -> str:
    """A spatial model's latent dimension is channels per 8x8 cell, not a vector length."""
    spatial = row["arch"] in ("spatial", "hyperprior")
    return f"{row['latent_dim']} per cell" if spatial else str(row["latent_dim"])


def print_table(rows: list[dict[str, Any]]) -> None:
    """One line per model when the terminal is wide enough (with the data column if that fits
    too), else one block per model: nothing is ever cut, since two red-car names differ only at
    their ends and a fingerprint is only useful whole."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)  # its width honours $COLUMNS
    if not rows:
        searched = ", ".join(str(p) for p in bundle_search_path())
        console.print(escape(f"No models are installed. Searched: {searched}."), soft_wrap=True)
        return
    cells = [
        {
            "name": row["name"],
            "where": row["where"],
            "fingerprint": row["short_fingerprint"],
            "arch": row["arch"],
            "image": row["image"],
            "latent": _latent(row),
            "onnx": "yes" if row["exported"] else "no",
            "quality": str(row["quality"]),
            "data": row["data"] or "-",
        }
        for row in rows
    ]
    everything = list(cells[0])
    # Narrower terminals drop the data, then the recommended quality (the blocks below keep both).
    for columns in (everything, everything[:-1], everything[:-2]):
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False)
        for column in columns:
            table.add_column(column, no_wrap=True)
        for cell in cells:
            table.add_row(*(escape(cell[column]) for column in columns))
        natural = console.measure(table, options=console.options.update(width=10_000)).maximum
        if natural <= console.width:
            console.print(table)
            return
    for row in rows:
        exported = "ONNX exported" if row["exported"] else "not exported to ONNX"
        lines = [
            f"  where: {row['where']}",
            f"  model: {row['arch']} {row['image']}, latent {_latent(row)}, {exported}",
            f"  recommended quality: {row['quality']}",
            f"  data: {row['data'] or '-'}",
        ]
        console.print(escape(f"{row['name']}  fingerprint {row['short_fingerprint']}"), style="bold")
        console.print(escape("\n".join(lines)), overflow="fold")


def register(app: typer.Typer) -> None:
    @app.command("models")
    @user_command
    def models_command(
        as_json: bool = typer.Option(False, "--json", help="Print one JSON list instead of a table."),
    ) -> None:
        """List the installed models: where each was found ($LATENTZ_MODELS, ~/.cache, the package)."""
        rows = model_rows()
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        print_table(rows)
