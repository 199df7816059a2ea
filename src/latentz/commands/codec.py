"""`latentz encode` and `latentz decode`: images to .latentz files and back, one file or whole folders.

Torch-free: both run on `latentz.runtime`. Outputs are never overwritten unless ``--force``. In
folder mode the files are spread over ``--jobs`` worker processes (default: every core), a bad
input is reported and skipped, and the command exits 1 at the end if any was.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from latentz.commands import user_errors

if TYPE_CHECKING:
    from latentz.codec.limits import SizeLimits

LATENTZ_SUFFIX = ".latentz"
DEFAULT_CODED_PIXELS = 4_194_304
"""`SizeLimits.max_coded_pixels`'s default, kept literal so that --help does not import numpy."""
MAX_CODED_PIXELS_HELP = (
    "Most pixels a photo model codes at once (default 4,194,304 = 2048x2048, about 0.9 GB to decode): "
    "bigger images are scaled down, bigger files refused."
)
IMAGE_FORMATS = {".png": "PNG", ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@dataclass(frozen=True)
class EncodeJob:
    """One image to compress; plain data so it can travel to a worker process."""

    model: str
    source: Path
    target: Path
    quality: int | None
    step: float | None
    force: bool
    max_coded_pixels: int = DEFAULT_CODED_PIXELS


@dataclass(frozen=True)
class DecodeJob:
    """One .latentz file to decode; ``model`` None means: find it by the file's fingerprint."""

    model: str | None
    source: Path
    target: Path
    force: bool
    max_coded_pixels: int = DEFAULT_CODED_PIXELS


@dataclass(frozen=True)
class Outcome:
    source: Path
    message: str
    ok: bool


def _limits(max_coded_pixels: int) -> SizeLimits:
    from latentz.codec.limits import SizeLimits

    return SizeLimits(max_coded_pixels=max_coded_pixels, raise_with="--max-coded-pixels")


def _check_target(target: Path, force: bool) -> None:
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass --force to overwrite it")


def _write(target: Path, data: bytes) -> None:
    from latentz.bundle import atomic_write_bytes

    atomic_write_bytes(target, data)


def encode_file(job: EncodeJob) -> Outcome:
    """Compress one image, check the round trip, write the file; raises on bad input."""
    from latentz import metrics
    from latentz import runtime as rt

    _check_target(job.target, job.force)
    limits = _limits(job.max_coded_pixels)
    runtime = rt.load(job.model)
    prepared = runtime.prepare(job.source, limits)
    data = runtime.compress(prepared.image, quality=job.quality, step=job.step)
    decoded = runtime.decompress(data, limits)
    _write(job.target, data)
    original_bytes = job.source.stat().st_size
    psnr = metrics.psnr(prepared.image[None], decoded[None])
    return Outcome(
        job.source,
        f"{job.source.name}: {original_bytes:,} B -> {len(data):,} B "
        f"({original_bytes / len(data):.1f}x smaller), PSNR {psnr:.2f} dB; {prepared.note}",
        True,
    )


def decode_file(job: DecodeJob) -> Outcome:
    """Decode one .latentz file with its model and write the image; raises on bad input."""
    from PIL import Image

    from latentz import runtime as rt

    _check_target(job.target, job.force)
    data = job.source.read_bytes()
    runtime = rt.load(job.model) if job.model else rt.model_for_file(data)
    image = runtime.decompress(data, _limits(job.max_coded_pixels))
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    fmt = IMAGE_FORMATS.get(job.target.suffix.lower(), "PNG")
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    _write(job.target, buffer.getvalue())
    return Outcome(
        job.source,
        f"{job.source.name} -> {job.target} ({image.shape[1]}x{image.shape[0]}, {runtime.name})",
        True,
    )


def _guarded(work: Callable[[EncodeJob | DecodeJob], Outcome], job: EncodeJob | DecodeJob) -> Outcome:
    """Run one job; a user error becomes a failed outcome, so one bad file never stops the rest."""
    try:
        return work(job)
    except user_errors() as error:
        return Outcome(job.source, f"{job.source.name}: {error}", False)


def guarded_encode(job: EncodeJob) -> Outcome:
    return _guarded(encode_file, job)  # type: ignore[arg-type]


def guarded_decode(job: DecodeJob) -> Outcome:
    return _guarded(decode_file, job)  # type: ignore[arg-type]


def _single_thread_worker() -> None:
    """Each worker process uses one core; the pool provides the parallelism."""
    os.environ["OMP_NUM_THREADS"] = "1"


def _outcomes(work: Callable, jobs: list, workers: int) -> Iterator[Outcome]:
    """Outcomes in input order, from this process (one worker) or a pool of spawned processes.

    Spawned, not forked: ONNX Runtime's threads do not survive a fork, and each worker loads its
    sessions once (the runtime caches them per process).
    """
    if workers <= 1 or len(jobs) <= 1:
        yield from map(work, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_single_thread_worker) as pool:
        yield from pool.map(work, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))


def run_folder(work: Callable, jobs: list, workers: int, what: str) -> list[Outcome]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    outcomes = []
    with Progress(
        TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
    ) as bar:
        task = bar.add_task(what, total=len(jobs))
        for outcome in _outcomes(work, jobs, workers):
            outcomes.append(outcome)
            bar.advance(task)
    return outcomes


def _report(outcomes: list[Outcome], verb: str) -> None:
    failed = [o for o in outcomes if not o.ok]
    for outcome in outcomes:
        typer.echo(outcome.message, err=not outcome.ok)
    typer.echo(f"{verb} {len(outcomes) - len(failed)} of {len(outcomes)} files", err=bool(failed))
    if failed:
        typer.echo(f"error: {len(failed)} file(s) skipped (reasons above)", err=True)
        raise typer.Exit(1)


def _default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


JOBS_HELP = "Worker processes for folders (default: every core)."


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
        jobs: int = typer.Option(None, "--jobs", "-j", min=1, help=JOBS_HELP),
        max_coded_pixels: int = typer.Option(
            DEFAULT_CODED_PIXELS, "--max-coded-pixels", min=64, help=MAX_CODED_PIXELS_HELP
        ),
    ) -> None:
        """Compress images into .latentz files; prints sizes, ratio and round-trip PSNR."""
        from latentz import runtime as rt
        from latentz.data import list_image_files

        if quality is not None and step is not None:
            _fail("give --quality or --step, not both")
        try:
            model_path = str(rt.load(model).info.path)  # fail fast on a bad model, before any work
            if source.is_dir():
                sources = list_image_files(source)
                if not sources:
                    _fail(f"{source}: no JPEG/PNG/WebP/BMP files found")
                work = [
                    EncodeJob(
                        model_path,
                        s,
                        out / s.relative_to(source).with_suffix(LATENTZ_SUFFIX),
                        quality,
                        step,
                        force,
                        max_coded_pixels,
                    )
                    for s in sources
                ]
                _report(run_folder(guarded_encode, work, jobs or _default_jobs(), "encoding"), "encoded")
                return
            outcome = encode_file(EncodeJob(model_path, source, out, quality, step, force, max_coded_pixels))
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
        jobs: int = typer.Option(None, "--jobs", "-j", min=1, help=JOBS_HELP),
        max_coded_pixels: int = typer.Option(
            DEFAULT_CODED_PIXELS, "--max-coded-pixels", min=64, help=MAX_CODED_PIXELS_HELP
        ),
    ) -> None:
        """Decode .latentz files into images with the model that made them."""
        try:
            if source.is_dir():
                sources = sorted(p for p in source.rglob(f"*{LATENTZ_SUFFIX}") if p.is_file())
                if not sources:
                    _fail(f"{source}: no {LATENTZ_SUFFIX} files found")
                work = [
                    DecodeJob(
                        model, s, out / s.relative_to(source).with_suffix(".png"), force, max_coded_pixels
                    )
                    for s in sources
                ]
                _report(run_folder(guarded_decode, work, jobs or _default_jobs(), "decoding"), "decoded")
                return
            if not source.is_file():
                _fail(f"{source}: no such file")
            outcome = decode_file(DecodeJob(model, source, out, force, max_coded_pixels))
        except user_errors() as error:
            _fail(str(error))
        typer.echo(outcome.message)
