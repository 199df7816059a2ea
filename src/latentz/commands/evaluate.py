"""`latentz eval`: likelihood bounds, bits/dim and reconstruction quality of a bundle on held-out data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from latentz.bundle import TRAIN_CONFIG_FILE, BundleInfo, training_val_fraction
from latentz.commands import fail, user_command
from latentz.files import sha256_file

if TYPE_CHECKING:
    from latentz.data import ImageSet


def _location(spec: str) -> tuple[str, Path]:
    """("idx" or "folder", the file or folder) a data spec reads; a named set is its training file."""
    from latentz.data import parse_spec, resolve_named

    kind, argument = parse_spec(spec)
    if kind == "named":
        return "idx", resolve_named(argument)[0]
    return kind, Path(argument).expanduser()


def _same_file(first: Path, second: Path) -> bool:
    """The same file, or a byte-for-byte copy (MNIST and Fashion-MNIST share names and sizes)."""
    if first.resolve() == second.resolve():
        return True
    return first.stat().st_size == second.stat().st_size and sha256_file(first) == sha256_file(second)


def is_training_data(spec: str, info: BundleInfo) -> bool:
    """Whether ``spec`` names the data the model was trained on, however it is written.

    A named set in the card (`mnist`) resolves to one file wherever it is run, and so does a card's
    file path run from where training ran: then it must be that file, or a copy of it. Elsewhere a
    card's path means nothing, so the same file (or folder) name holding as many images as training
    split into train and held-out will do.
    """
    from latentz.data import DatasetError, describe, parse_spec

    trained = str(info.card.get("data") or "")
    if not trained:
        return False
    if spec.strip() == trained.strip():
        return True
    try:
        kind, path = _location(spec)
        trained_kind, trained_path = _location(trained)
        if kind != trained_kind:
            return False
        if parse_spec(trained)[0] == "named" or (kind == "idx" and trained_path.is_file()):
            return _same_file(path, trained_path)
        if path.name != trained_path.name:
            return False
        count = describe(spec)["count"]
    except (DatasetError, OSError, ValueError):
        return False
    card = info.card
    expected = int(card.get("n_train", -1)) + int(card.get("n_val", 0)) + int(card.get("skipped_files", 0))
    try:
        limited = bool(json.loads((info.path / TRAIN_CONFIG_FILE).read_text()).get("max_train_images"))
    except (OSError, ValueError, AttributeError):
        limited = False
    return count >= expected if limited else count == expected


def _json_safe(value: Any) -> Any:
    """inf/NaN are not JSON; write them as null so the output always parses."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def choose_split(split: str | None, data: str | None, info: BundleInfo) -> tuple[str, str]:
    """The split to evaluate and why, in words for the report.

    Data a user names is evaluated whole, unless it is the model's own training data: then only
    the images training held out, since the rest would flatter the model.
    """
    if split is not None:
        return split, f"The {split} split, as --split asked."
    if data is None:
        return "test", f"These are images {info.name} never saw in training (its own data; no --data given)."
    if is_training_data(data, info):
        return "test", (
            f"{data} is the data {info.name} was trained on, so only the images training held out are "
            f"evaluated; --split all evaluates every image, training images included."
        )
    trained = info.card.get("data") or "none"
    return "all", (
        f"Every image of {data} is evaluated: it is not the data set {info.name} was trained on "
        f"({trained}); --split val evaluates a {training_val_fraction(info.path):.0%} split instead."
    )


def register(app: typer.Typer) -> None:
    app.command("eval")(user_command(eval_command))


def eval_command(
    model: str = typer.Argument(..., help="Bundle name or folder."),
    data: str | None = typer.Option(
        None,
        "--data",
        help="Data spec (mnist, fashion-mnist, idx:PATH, folder:DIR); default: the model's.",
    ),
    split: str | None = typer.Option(
        None,
        "--split",
        help="train, val, test or all. Default: the images the model never saw when --data is "
        "its own training data (or is not given), else all of --data.",
    ),
    iwae: int | None = typer.Option(
        None, "--iwae", min=1, help="Also compute the IWAE bound with K importance samples."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Use only the first N images."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Monte-Carlo estimates."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object."),
) -> None:
    """Evaluate a model: negative ELBO (+ IWAE), bits/dim, PSNR, SSIM and active units per image."""
    from latentz.commands.train import missing_training_modules

    problem = missing_training_modules("latentz eval", {"torch": "to run the model's weights"})
    if problem:
        fail(f"{problem}.")
    info = _checked_bundle(model)
    spec = data or _card_spec(info)
    split, reason = choose_split(split, data, info)
    images = _images(info, spec, split, limit, from_card=data is None)

    from latentz.evaluation import evaluate
    from latentz.models import load_model

    try:
        vae = load_model(info.path)
    except (RuntimeError, OSError, ValueError) as error:
        fail(f"the weights of {info.path} could not be loaded ({error}).")
    results = evaluate(vae, images.images, iwae_samples=iwae, seed=seed)
    results.update(
        {
            "data": spec,
            "split": split,
            "split_note": images.source_note,
            "split_reason": reason,
            "model": info.name,
        }
    )
    if as_json:
        typer.echo(json.dumps({key: _json_safe(value) for key, value in results.items()}))
        return
    _print_table(results)


def _checked_bundle(model: str) -> BundleInfo:
    """The bundle, with weights that are there and match the fingerprint in its card."""
    from latentz.bundle import BundleError, read_bundle
    from latentz.config import ConfigError

    try:
        info = read_bundle(model)
    except (BundleError, ConfigError, OSError, ValueError) as error:
        fail(str(error))
    weights = info.path / "weights.safetensors"
    if not weights.is_file():
        fail(f"{info.path} has no weights.safetensors, and evaluation needs the torch weights.")
    if info.fingerprint and sha256_file(weights) != info.fingerprint:
        fail(
            f"{weights} does not match the fingerprint in its card.json: the file is damaged or was replaced."
        )
    return info


def _card_spec(info: BundleInfo) -> str:
    """The model's own data from its card, found from any folder (`data.card_data_spec`)."""
    from latentz.data import DatasetError, card_data_spec

    if not info.card.get("data"):
        fail(f"{info.name}'s card names no data set, so there is nothing to default to; pass --data SPEC.")
    try:
        return card_data_spec(info)[0]
    except DatasetError as error:
        fail(f"{error}.")


def _images(info: BundleInfo, spec: str, split: str, limit: int | None, *, from_card: bool) -> ImageSet:
    """The images to evaluate, drawn as the bundle drew its split (`data.load_bundle_split`)."""
    from latentz.data import DatasetError, load_bundle_split

    config = info.config
    try:
        images = load_bundle_split(
            info.path, spec, split, image_size=config.image_size, channels=config.channels, limit=limit
        )
    except DatasetError as error:
        if from_card:  # the card's spec, often a path relative to where training ran
            fail(
                f"{error}. That data spec comes from {info.name}'s card ({info.path / 'card.json'}), "
                f"read from {Path.cwd()}; pass --data SPEC to say where the images are."
            )
        fail(str(error))
    if len(images) == 0:
        fail(f"the {split} split of {spec} holds no images; try --split all.")
    return images


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
    console.print(escape(results["split_reason"]))
    console.print(escape(f"Pixels: {results['pixels']}. Bits/dim: {results['bits_per_dim_note']}."))
