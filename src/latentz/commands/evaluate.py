"""`latentz eval`: likelihood bounds, bits/dim and reconstruction quality of a bundle on held-out data."""

from __future__ import annotations

import json
import math
from typing import Any

import typer


def _fail(message: str) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(2)


def _json_safe(value: Any) -> Any:
    """inf/NaN are not JSON; write them as null so the output always parses."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        model: str = typer.Argument(..., help="Bundle name or folder."),
        data: str | None = typer.Option(
            None,
            "--data",
            help="Data spec (mnist, fashion-mnist, idx:PATH, folder:DIR); default: the model's.",
        ),
        split: str = typer.Option("test", "--split", help="train, val, test or all."),
        iwae: int | None = typer.Option(
            None, "--iwae", min=1, help="Also compute the IWAE bound with K importance samples."
        ),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Use only the first N images."),
        seed: int = typer.Option(0, "--seed", help="Seed of the Monte-Carlo estimates."),
        as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object."),
    ) -> None:
        """Evaluate a model: negative ELBO (+ IWAE), bits/dim, PSNR, SSIM and active units per image."""
        from latentz.bundle import BundleError, read_bundle, sha256_file, training_val_fraction
        from latentz.config import ConfigError
        from latentz.data import DatasetError, load_dataset

        try:
            info = read_bundle(model)
        except (BundleError, ConfigError, OSError, ValueError) as error:
            raise _fail(str(error)) from None
        weights = info.path / "weights.safetensors"
        if not weights.is_file():
            raise _fail(f"{info.path} has no weights.safetensors; evaluation needs the torch weights")
        if info.fingerprint and sha256_file(weights) != info.fingerprint:
            raise _fail(f"{weights} does not match the fingerprint in card.json (corrupt or replaced)")
        spec = data or info.card.get("data")
        if not spec:
            raise _fail("the model's card names no data set; pass --data")
        config = info.config
        try:
            images = load_dataset(
                spec,
                split=split,
                image_size=config.image_size,
                channels=config.channels,
                val_fraction=training_val_fraction(info.path),
                limit=limit,
            )
        except DatasetError as error:
            raise _fail(str(error)) from None
        if len(images) == 0:
            raise _fail(f"the {split} split of {spec} holds no images")

        from latentz.evaluation import evaluate
        from latentz.models import load_model

        try:
            vae = load_model(info.path)
        except (RuntimeError, OSError, ValueError) as error:
            raise _fail(f"could not load the weights of {info.path}: {error}") from None
        results = evaluate(vae, images.images, iwae_samples=iwae, seed=seed)
        results.update({"data": spec, "split": split, "split_note": images.source_note, "model": info.name})
        if as_json:
            typer.echo(json.dumps({key: _json_safe(value) for key, value in results.items()}))
            return
        _print_table(results)


def _print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"latentz eval {results['model']} on {results['data']} ({results['split']})")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_column("meaning")
    rows = [
        ("negative ELBO", f"{results['neg_elbo_nats']:.2f} nats", "per image, 1 sample of q(z|x)"),
        ("  reconstruction", f"{results['recon_nats']:.2f} nats", "-log p(x|z)"),
        ("  KL", f"{results['kl_nats']:.2f} nats", "KL(q(z|x) || p(z))"),
    ]
    if "iwae_nats" in results:
        rows.append(
            ("IWAE bound", f"{results['iwae_nats']:.2f} nats", f"K = {results['iwae_samples']} samples")
        )
    rows += [
        ("bits/dim", f"{results['bits_per_dim']:.4f}", "from the negative ELBO"),
        ("PSNR", f"{results['psnr_db']:.2f} dB", "mean reconstruction"),
        ("SSIM", "n/a" if results["ssim"] is None else f"{results['ssim']:.4f}", "mean reconstruction"),
        ("active units", f"{results['active_units']} / {results['latent_dim']}", "Cov_x(E_q[z]) > 0.01"),
        ("images", str(results["n_images"]), results["split_note"]),
    ]
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console = Console()
    console.print(table)
    console.print(escape(f"Pixels: {results['pixels']}. Bits/dim: {results['bits_per_dim_note']}."))
