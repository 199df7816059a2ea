"""`latentz encode` and `latentz decode`: images to .latentz files and back, one file or whole folders.

Torch-free: both run on `latentz.runtime`. Outputs are never overwritten unless ``--force``; in
folder mode a bad input is reported and skipped, and the command fails at the end if any was.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from latentz.commands import user_errors

if TYPE_CHECKING:
    from latentz.runtime import ModelRuntime

LATENTZ_SUFFIX = ".latentz"


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@dataclass
class _Outcome:
    source: Path
    target: Path | None
    message: str
    ok: bool


def _check_target(target: Path, force: bool) -> None:
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass --force to overwrite it")


def _write(target: Path, data: bytes) -> None:
    from latentz.bundle import atomic_write_bytes

    atomic_write_bytes(target, data)


def _encode_one(
    runtime: ModelRuntime, source: Path, target: Path, quality: int | None, step: float | None, force: bool
) -> _Outcome:
    from latentz import metrics

    _check_target(target, force)
    prepared = runtime.prepare(source)
    data = runtime.compress(prepared.image, quality=quality, step=step)
    decoded = runtime.decompress(data)
    _write(target, data)
    original_bytes = source.stat().st_size
    psnr = metrics.psnr(prepared.image[None], decoded[None])
    return _Outcome(
        source,
        target,
        f"{source.name}: {original_bytes:,} B -> {len(data):,} B "
        f"({original_bytes / len(data):.1f}x smaller), PSNR {psnr:.2f} dB; {prepared.note}",
        True,
    )


def _decode_one(model: str | None, source: Path, target: Path, force: bool) -> _Outcome:
    from PIL import Image

    from latentz import runtime as rt

    _check_target(target, force)
    data = source.read_bytes()
    runtime = rt.load(model) if model else rt.model_for_file(data)
    image = runtime.decompress(data)
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    fmt = {".png": "PNG", ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        target.suffix.lower(), "PNG"
    )
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    _write(target, buffer.getvalue())
    return _Outcome(
        source, target, f"{source.name} -> {target} ({image.shape[1]}x{image.shape[0]}, {runtime.name})", True
    )


def _run_folder(
    sources: list[Path], target_for: Callable[[Path], Path], work: Callable[[Path, Path], _Outcome], what: str
) -> list[_Outcome]:
    """Run ``work`` over every file with a progress bar; a failure is recorded, never fatal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    errors = user_errors()
    outcomes = []
    with Progress(
        TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
    ) as bar:
        task = bar.add_task(what, total=len(sources))
        for source in sources:
            try:
                outcomes.append(work(source, target_for(source)))
            except errors as error:
                outcomes.append(_Outcome(source, None, f"{source.name}: {error}", False))
            bar.advance(task)
    return outcomes


def _report(outcomes: list[_Outcome], verb: str) -> None:
    failed = [o for o in outcomes if not o.ok]
    for outcome in outcomes:
        typer.echo(outcome.message, err=not outcome.ok)
    typer.echo(f"{verb} {len(outcomes) - len(failed)} of {len(outcomes)} files", err=bool(failed))
    if failed:
        typer.echo(f"error: {len(failed)} file(s) skipped (reasons above)", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    @app.command("encode")
    def encode_command(
        source: Path = typer.Argument(..., help="An image, or a folder of images (recursive)."),
        model: str = typer.Option(..., "--model", "-m", help="Bundle name or folder."),
        out: Path = typer.Option(
            ..., "--out", "-o", help="Output .latentz file, or a folder for a folder of images."
        ),
        quality: int = typer.Option(
            None, "--quality", "-q", min=0, max=100, help="0..100, higher is better (default 75)."
        ),
        step: float = typer.Option(
            None, "--step", help="Quantisation step in posterior standard deviations (instead of --quality)."
        ),
        force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    ) -> None:
        """Compress images into .latentz files; prints sizes, ratio and round-trip PSNR."""
        from latentz import runtime as rt
        from latentz.data import list_image_files

        if quality is not None and step is not None:
            _fail("give --quality or --step, not both")
        try:
            runtime = rt.load(model)
            if source.is_dir():
                sources = list_image_files(source)
                if not sources:
                    _fail(f"{source}: no JPEG/PNG/WebP/BMP files found")
                outcomes = _run_folder(
                    sources,
                    lambda s: out / s.relative_to(source).with_suffix(LATENTZ_SUFFIX),
                    lambda s, t: _encode_one(runtime, s, t, quality, step, force),
                    "encoding",
                )
                _report(outcomes, "encoded")
                return
            outcome = _encode_one(runtime, source, out, quality, step, force)
        except user_errors() as error:
            _fail(str(error))
        typer.echo(outcome.message)
        typer.echo(f"wrote {out}")

    @app.command("decode")
    def decode_command(
        source: Path = typer.Argument(..., help="A .latentz file, or a folder of them (recursive)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output image (PNG), or a folder."),
        model: str = typer.Option(
            None, "--model", "-m", help="Bundle to decode with (default: found by the file's fingerprint)."
        ),
        force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    ) -> None:
        """Decode .latentz files into images with the model that made them."""

        try:
            if source.is_dir():
                sources = sorted(p for p in source.rglob(f"*{LATENTZ_SUFFIX}") if p.is_file())
                if not sources:
                    _fail(f"{source}: no {LATENTZ_SUFFIX} files found")
                outcomes = _run_folder(
                    sources,
                    lambda s: out / s.relative_to(source).with_suffix(".png"),
                    lambda s, t: _decode_one(model, s, t, force),
                    "decoding",
                )
                _report(outcomes, "decoded")
                return
            if not source.is_file():
                _fail(f"{source}: no such file")
            outcome = _decode_one(model, source, out, force)
        except user_errors() as error:
            _fail(str(error))
        typer.echo(outcome.message)
