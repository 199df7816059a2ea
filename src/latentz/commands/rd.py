"""`latentz rd`: rate-distortion curves of a bundle's codec against JPEG and WebP, with BD-rates."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from latentz.commands import user_errors


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


def register(app: typer.Typer) -> None:
    @app.command("rd")
    def rd_command(
        model: str = typer.Argument(..., help="Bundle name or folder."),
        data: str = typer.Option(
            None, "--data", help="Images to measure on (data spec); default: the model's own data."
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
        out: Path = typer.Option(
            None, "--out", "-o", help="Folder for the JSON files and rd.png (default: rd-MODEL)."
        ),
        qualities: str = typer.Option(None, "--qualities", help="latentz qualities, e.g. 0,25,50,75,100."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    ) -> None:
        """Measure bytes per image against PSNR/SSIM for latentz, JPEG and WebP on the same images.

        Writes one CompressAI-layout JSON per codec, summary.json and rd.png, and prints the
        BD-rate of latentz against each classic codec over the PSNR range both reach.
        """
        from latentz import rd
        from latentz import runtime as rt
        from latentz.bundle import atomic_write_json
        from latentz.data import load_bundle_split
        from latentz.plots import plot_rd

        latentz_qualities = _parse_qualities(qualities, rd.LATENTZ_QUALITIES)
        try:
            runtime = rt.load(model)
            spec = data or runtime.info.card.get("data")
            if not spec:
                raise ValueError("the model's card names no data set; pass --data")
            config = runtime.config
            images = load_bundle_split(
                runtime.info.path,
                spec,
                split,
                image_size=image_size or config.image_size,
                channels=config.channels,
                limit=limit,
            )
            if len(images) == 0:
                raise ValueError(f"the {split} split of {spec} holds no images")
            result = rd.compare(
                runtime,
                images.images,
                qualities=latentz_qualities,
                progress=lambda name: typer.echo(f"measuring {name} on {len(images)} images ...", err=True),
            )
        except user_errors() as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        result.update({"data": spec, "split": split, "split_note": images.source_note})
        folder = out or Path(f"rd-{runtime.name}")
        for name, entry in result["codecs"].items():
            atomic_write_json(folder / f"{name}.json", entry)
        atomic_write_json(folder / "summary.json", result)
        curves = {
            name: list(zip(entry["results"]["bytes"], entry["results"]["psnr"], strict=True))
            for name, entry in result["codecs"].items()
        }
        plot_rd(
            curves,
            folder / "rd.png",
            title=f"{runtime.name} on {result['n_images']} held-out images ({result['image']})",
        )
        if as_json:
            typer.echo(json.dumps(result))
            return
        _print(result, folder)


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
    console.print(f"wrote {folder}/ (latentz.json, webp.json, jpeg.json, summary.json, rd.png)")
