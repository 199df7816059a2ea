"""`latentz encode` and `latentz decode`: images to .latentz files and back, one file or whole folders.

The commands check their flags and hand the work to `latentz.commands.codec.coding` (one file) and
`latentz.commands.codec.folders` (a folder: names decided up front, ``--jobs`` worker processes that end
with the command however it ends, one report).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from latentz.commands import fail, user_command
from latentz.commands.codec.coding import (
    DECODED_SUFFIX,
    DEFAULT_CODED_PIXELS,
    IMAGE_OUTPUTS_TEXT,
    IMAGE_SUFFIXES,
    LATENTZ_SUFFIX,
    MAX_CODED_PIXELS_HELP,
    DecodeJob,
    EncodeJob,
    guarded_decode,
    guarded_encode,
    image_output_format,
    installed_models,
)
from latentz.commands.codec.folders import (
    EXISTS,
    FAILED,
    SKIPPED,
    Outcome,
    default_jobs,
    distinct_targets,
    print_json,
    report,
    run_planned,
)


def _check_output_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        fail(f"{out} exists and is not a folder; a folder of inputs needs an output folder")


def _check_flags(force: bool, skip_existing: bool) -> None:
    if force and skip_existing:
        fail("give --force (overwrite existing outputs) or --skip-existing (keep them), not both")


ENCODE_OUT_HELP = (
    "Output .latentz file (an existing folder: STEM.latentz in it). For a folder of images, a folder: "
    "STEM.latentz each, or NAME.latentz (s00.png.latentz, s00.bmp.latentz) for inputs in one folder whose "
    "names differ only in extension."
)
JOBS_HELP = "Worker processes for folders (default: every core)."
FORCE_HELP = "Overwrite existing outputs (without it they are never replaced)."
SKIP_HELP = (
    "Leave outputs that already exist and count them as skipped, e.g. to finish an interrupted folder."
)


def _report_one(outcome: Outcome, as_json: bool, wrote_line: bool) -> None:
    """One input's result: a few lines (the model and quality when they were chosen for the user,
    the figures, the output) or, with ``as_json``, one JSON object; warnings and errors on stderr."""
    if outcome.warning:
        typer.echo(f"warning: {outcome.warning}", err=True)
    if as_json:
        print_json(outcome.record())
    if outcome.status == EXISTS:
        fail(f"{outcome.note}; pass --force to overwrite it")
    if outcome.status == FAILED:
        fail(outcome.error or outcome.message)
    if as_json:
        return
    if outcome.status == SKIPPED:
        typer.echo(f"skipped {outcome.source}: {outcome.target} already exists")
        return
    if outcome.model_reason:
        typer.echo(f"model {outcome.model}, for {outcome.model_reason}; -m sets another")
    if outcome.quality_reason:
        typer.echo(f"quality {outcome.quality}, {outcome.quality_reason}; -q sets another")
    typer.echo(outcome.message)
    if wrote_line:
        typer.echo(f"wrote {outcome.target}")


TARGET_BYTES_HELP = (
    "Instead of --quality: the highest quality whose file is at most N bytes (each file; the output "
    "says the quality chosen, the size and PSNR reached, and whether the target was met)."
)
TARGET_PSNR_HELP = "Instead of --quality: the lowest quality whose round trip reaches X dB PSNR (each file)."


def _check_targets(
    target_bytes: int | None, target_psnr: float | None, quality: int | None, step: float | None
) -> None:
    """Refuse two targets, a target with --quality or --step, or a value out of range (exit 2)."""
    from latentz.codec import CodecSettingError
    from latentz.targets import check_targets

    if (target_bytes is not None or target_psnr is not None) and step is not None:
        fail("give --step or a target (--target-bytes, --target-psnr), not both")
    try:
        check_targets(target_bytes, target_psnr, quality)
    except CodecSettingError as error:
        message = str(error)
        for said, flag in FLAG_NAMES:
            message = message.replace(said, flag)
        fail(message)


FLAG_NAMES = (
    ("a byte target", "--target-bytes"),
    ("the byte target", "--target-bytes"),
    ("a PSNR target", "--target-psnr"),
    ("the PSNR target", "--target-psnr"),
    ("a quality", "--quality"),
)
"""`latentz.targets.check_targets`'s words for the settings, and the flags that set them."""


ENCODE_MODEL_HELP = (
    "Bundle name or folder (default: the installed model that fits each image: the photo codec for colour "
    "photos, the digit codec for small grey images; the output says which and why)."
)
ENCODE_QUALITY_HELP = (
    "0..100, higher is better (default: the model's recommended quality, 50 for photo models and 30 for "
    "the digit codec; the output says which)."
)
JSON_HELP = (
    "Print one JSON object (a folder: every file and a summary) on stdout instead of lines; warnings "
    "and errors still go to stderr."
)


def register(app: typer.Typer) -> None:
    _register_encode(app)
    _register_decode(app)


def _register_encode(app: typer.Typer) -> None:
    @app.command("encode")
    @user_command
    def encode_command(
        source: Path = typer.Argument(..., help="An image, or a folder of images (recursive)."),
        model: str = typer.Option(None, "--model", "-m", help=ENCODE_MODEL_HELP),
        out: Path = typer.Option(
            ...,
            "--out",
            "-o",
            help=ENCODE_OUT_HELP,
        ),
        quality: int = typer.Option(None, "--quality", "-q", min=0, max=100, help=ENCODE_QUALITY_HELP),
        step: float = typer.Option(
            None, "--step", help="Quantisation step in posterior standard deviations (instead of --quality)."
        ),
        target_bytes: int = typer.Option(None, "--target-bytes", help=TARGET_BYTES_HELP),
        target_psnr: float = typer.Option(None, "--target-psnr", help=TARGET_PSNR_HELP),
        force: bool = typer.Option(False, "--force", help=FORCE_HELP),
        skip_existing: bool = typer.Option(False, "--skip-existing", help=SKIP_HELP),
        jobs: int = typer.Option(None, "--jobs", "-j", min=1, help=JOBS_HELP),
        max_coded_pixels: int = typer.Option(
            DEFAULT_CODED_PIXELS, "--max-coded-pixels", min=64, help=MAX_CODED_PIXELS_HELP
        ),
        as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    ) -> None:
        """Compress images into .latentz files; prints sizes, bits per pixel, round-trip PSNR and time."""
        from latentz import choice
        from latentz import runtime as rt

        if quality is not None and step is not None:
            fail("give --quality or --step, not both")
        _check_flags(force, skip_existing)
        _check_targets(target_bytes, target_psnr, quality, step)
        job = EncodeJob(
            model,
            source,
            out,
            quality,
            step,
            force,
            skip_existing,
            max_coded_pixels,
            target_bytes,
            target_psnr,
        )
        if model is None and not installed_models():
            raise choice.NoModelError()
        if model is not None:  # fail fast if bad; workers get the folder, not the name
            job = replace(job, model=str(rt.load(model).info.path))
        if source.is_dir():
            _encode_folder(job, jobs, as_json)
            return
        job = replace(job, target=_single_encode_target(source, out))
        _report_one(guarded_encode(job), as_json, wrote_line=True)


def _register_decode(app: typer.Typer) -> None:
    @app.command("decode")
    @user_command
    def decode_command(
        source: Path = typer.Argument(..., help="A .latentz file, or a folder of them (recursive)."),
        out: Path = typer.Option(
            ...,
            "--out",
            "-o",
            help=f"Output image, its format from the extension ({IMAGE_OUTPUTS_TEXT}; an existing "
            "folder: STEM.png in it); for a folder of .latentz files a folder: STEM.png each.",
        ),
        model: str = typer.Option(
            None, "--model", "-m", help="Bundle to decode with (default: found by the file's fingerprint)."
        ),
        force: bool = typer.Option(False, "--force", help=FORCE_HELP),
        skip_existing: bool = typer.Option(False, "--skip-existing", help=SKIP_HELP),
        jobs: int = typer.Option(None, "--jobs", "-j", min=1, help=JOBS_HELP),
        max_coded_pixels: int = typer.Option(
            DEFAULT_CODED_PIXELS, "--max-coded-pixels", min=64, help=MAX_CODED_PIXELS_HELP
        ),
        as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    ) -> None:
        """Decode .latentz files into images with the model that made them."""
        _check_flags(force, skip_existing)
        job = DecodeJob(model, source, out, force, skip_existing, max_coded_pixels)
        if source.is_dir():
            _decode_folder(job, jobs, as_json)
            return
        if out.is_dir():
            job = replace(job, target=out / (source.stem + DECODED_SUFFIX))
        image_output_format(job.target)  # an unknown extension is refused before any work
        _report_one(guarded_decode(job), as_json, wrote_line=False)


def _single_encode_target(source: Path, out: Path) -> Path:
    """Where one image's .latentz file goes; refuses an image name or the input itself."""
    if out.is_dir():  # like cp: into the folder, under the input's name
        out = out / (source.stem + LATENTZ_SUFFIX)
    if out.suffix.lower() in IMAGE_SUFFIXES:
        fail(f"{out} names an image; `latentz encode` writes .latentz files (-o NAME.latentz)")
    if out.exists() and source.exists() and out.samefile(source):
        fail(f"{out} is the input itself; give another output name")
    return out


def _encode_folder(settings: EncodeJob, jobs: int | None, as_json: bool) -> None:
    """Encode every image under ``settings.source`` into the folder ``settings.target``, one job each
    with the settings' model, quality and flags."""
    from latentz import choice
    from latentz import runtime as rt
    from latentz.data import list_image_files

    source, out = settings.source, settings.target
    _check_output_folder(out)
    sources = list_image_files(source)
    if not sources:
        fail(f"{source}: no JPEG/PNG/WebP/BMP files found")
    work = [
        replace(settings, source=s, target=target)
        for s, target in zip(sources, distinct_targets(source, sources, out, LATENTZ_SUFFIX), strict=True)
    ]
    targeted = settings.target_bytes is not None or settings.target_psnr is not None
    chosen = settings.quality is not None or settings.step is not None or targeted
    if settings.model is not None and not chosen and not as_json:
        recommended = choice.recommended_quality(rt.load(settings.model).config)
        typer.echo(f"quality {recommended.quality}, {recommended.reason}; -q sets another")
    outcomes = run_planned(
        guarded_encode, work, jobs or default_jobs(), "encoding", settings.force, settings.skip_existing
    )
    report(outcomes, "encoded", as_json, {"source": str(source), "out": str(out)})


def _decode_folder(settings: DecodeJob, jobs: int | None, as_json: bool) -> None:
    """Decode every .latentz file under ``settings.source`` into the folder ``settings.target``."""
    source, out = settings.source, settings.target
    _check_output_folder(out)
    sources = sorted(p for p in source.rglob(f"*{LATENTZ_SUFFIX}") if p.is_file())
    if not sources:
        fail(f"{source}: no {LATENTZ_SUFFIX} files found")
    work = [
        replace(settings, source=s, target=target)
        for s, target in zip(sources, distinct_targets(source, sources, out, DECODED_SUFFIX), strict=True)
    ]
    outcomes = run_planned(
        guarded_decode, work, jobs or default_jobs(), "decoding", settings.force, settings.skip_existing
    )
    report(outcomes, "decoded", as_json, {"source": str(source), "out": str(out)})
