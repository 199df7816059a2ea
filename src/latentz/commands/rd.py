"""`latentz rd`: rate-distortion curves of a bundle's codec against JPEG, WebP and AVIF, with BD-rates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from latentz.commands import user_command

if TYPE_CHECKING:
    import numpy as np

    from latentz.data import ImageSet


def _parse_qualities(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if text is None:
        return default
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers 0..100, got {text!r}") from None
    if not values or min(values) < 0 or max(values) > 100:
        raise typer.BadParameter(f"qualities must be integers from 0 to 100, got {text!r}")
    return values


def _own_size_images(
    images: ImageSet, bundle: Path, split: str, channels: int, limit: int | None
) -> list[np.ndarray]:
    """The same images as ``images`` (the same split, the same files), each at its own size: photos
    read again whole, IDX images at their native size."""
    from latentz import imaging
    from latentz.data import load_bundle_split

    if images.files:
        return [imaging.load_array(path, None, channels) for path in images.files]
    native = load_bundle_split(bundle, images.spec, split, image_size=None, channels=channels, limit=limit)
    return list(native.images)


@user_command
def rd_command(
    model: str = typer.Argument(..., help="Bundle name or folder."),
    data: str = typer.Option(
        None,
        "--data",
        help="Images to measure on (data spec); default: the model's own data as its card names it "
        "(a relative path is also looked for from the folder the model was trained in).",
    ),
    split: str = typer.Option("val", "--split", help="train, val, test or all (default: held-out val)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Use only the first N images."),
    image_size: int = typer.Option(
        None,
        "--image-size",
        min=8,
        help="Square side the images are cropped and resized to (default: the model's training "
        "size; a spatial model can be measured at any size).",
    ),
    own_size: bool = typer.Option(
        False,
        "--own-size",
        help="Code each photo whole at its own size, not cropped to a square (fully convolutional "
        "models only); every codec gets the same photos.",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="Folder for the JSON files and rd.png (default: rd-MODEL, or rd-MODEL-own-size).",
    ),
    qualities: str = typer.Option(None, "--qualities", help="latentz qualities, e.g. 0,25,50,75,100."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Measure bytes per image against PSNR/SSIM for latentz, JPEG, WebP and AVIF on the same images.

    Writes one CompressAI-layout JSON per codec, summary.json and rd.png, and prints the
    BD-rate of latentz against each classic codec over the PSNR range both reach.
    """
    from latentz import rd
    from latentz import runtime as rt
    from latentz.data import DatasetError, card_data_spec, load_bundle_split

    latentz_qualities = _parse_qualities(qualities, rd.LATENTZ_QUALITIES)
    if own_size and image_size is not None:
        raise typer.BadParameter("give --own-size or --image-size, not both")
    runtime = rt.load(model)
    config = runtime.config
    if own_size and not config.fully_convolutional:
        raise rt.ModelRuntimeError(
            f"{runtime.name} codes only {config.image_size}x{config.image_size} images (a fixed-size "
            "model); --own-size needs a fully convolutional (spatial) model"
        )
    if data:
        spec, origin = data, data
    else:
        spec, origin = card_data_spec(runtime.info)
    images = load_bundle_split(
        runtime.info.path,
        spec,
        split,
        image_size=image_size or config.image_size,
        channels=config.channels,
        limit=limit,
    )
    if len(images) == 0:
        raise DatasetError(f"the {split} split of {spec} holds no images")
    measured = (
        _own_size_images(images, runtime.info.path, split, config.channels, limit)
        if own_size
        else images.images
    )
    typer.echo(f"data: {origin}", err=True)
    result = rd.compare(
        runtime,
        measured,
        qualities=latentz_qualities,
        progress=lambda name: typer.echo(f"measuring {name} on {len(images)} images ...", err=True),
    )
    split_note = images.source_note
    if own_size:
        split_note = re.sub(r"; resized to \d+x\d+ keeping aspect, centre-cropped$", "", split_note) + (
            "; each image coded whole at its own size (latentz pads to whole latent cells and crops "
            "back; every codec codes, and is scored on, the same pixels)"
        )
    result.update({"data": spec, "split": split, "split_note": split_note, "own_size": own_size})
    folder = out or Path(f"rd-{runtime.name}" + ("-own-size" if own_size else ""))
    _write(result, folder)
    if as_json:
        typer.echo(json.dumps(result))
        return
    _print(result, folder)


def _write(result: dict, folder: Path) -> None:
    """One CompressAI-layout JSON per codec, summary.json and the rd.png plot, in ``folder``."""
    from latentz.bundle import atomic_write_json
    from latentz.plots import plot_rd

    for name, entry in result["codecs"].items():
        atomic_write_json(folder / f"{name}.json", entry)
    atomic_write_json(folder / "summary.json", result)
    curves = {
        name: list(zip(entry["results"]["bytes"], entry["results"]["psnr"], strict=True))
        for name, entry in result["codecs"].items()
    }
    plot_rd(curves, folder / "rd.png", title=plot_title(result))


def register(app: typer.Typer) -> None:
    app.command("rd")(rd_command)


def plot_title(result: dict) -> str:
    """rd.png's title: short enough for the figure, so own sizes give only their mean."""
    which = "held-out" if result["split"] in ("val", "test") else result["split"]
    size = result["image"]
    if result.get("own_size"):
        mean = re.search(r"mean (\d+x\d+)", size)
        size = f"own sizes, mean {mean.group(1)}" if mean else "own sizes"
    return f"{result['model']} on {result['n_images']} {which} images ({size})"


def _print(result: dict, folder: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(
        title=f"rate-distortion of {result['model']} on {result['n_images']} images ({result['image']})"
    )
    for column in ("codec", "quality", "bytes", "bpp", "PSNR dB", "SSIM"):
        table.add_column(column, justify="right")
    for name, entry in result["codecs"].items():
        values = entry["results"]
        ssims = values.get("ssim") or [None] * len(values["quality"])
        for quality, size, bpp, psnr, ssim in zip(
            values["quality"], values["bytes"], values["bpp"], values["psnr"], ssims, strict=True
        ):
            table.add_row(
                name,
                str(quality),
                f"{size:.1f}",
                f"{bpp:.3f}",
                f"{psnr:.2f}",
                "" if ssim is None else f"{ssim:.3f}",
            )
    console.print(table)
    for fmt, summary in result["bd_rate_vs"].items():
        bd = summary["bd_rate_percent"]
        if bd is None:
            console.print(f"BD-rate vs {fmt}: n/a (the PSNR ranges do not overlap)")
        else:
            low, high = summary["psnr_overlap_db"]
            console.print(
                f"BD-rate vs {fmt}: {bd:+.1f}% over {low:.1f}-{high:.1f} dB (negative = latentz smaller)"
            )
    for fmt, why in result.get("not_measured", {}).items():
        console.print(f"{fmt}: not measured ({why})")
    written = ", ".join(f"{name}.json" for name in result["codecs"])
    console.print(f"wrote {folder}/ ({written}, summary.json, rd.png)")
