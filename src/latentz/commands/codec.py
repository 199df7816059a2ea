"""`latentz encode` and `latentz decode`: images to .latentz files and back, one file or whole folders.

Torch-free: both run on `latentz.runtime`. Outputs are created exclusively (a temporary file is
hard-linked into place, which fails if the name is taken), so nothing is ever overwritten unless
``--force``, not even by another `latentz` process writing into the same folder at the same moment.

In folder mode every output name is decided before any work: inputs in one folder whose names
differ only in their extension or letter case (``s00.png``, ``s00.bmp``) all keep their extension
(``s00.png.latentz``, ``s00.bmp.latentz``), every other file becomes ``STEM.latentz``. Files are
spread over ``--jobs`` worker processes (default: every core), which end with the command however
it ends. A bad input is reported and the rest go on; ``--skip-existing`` finishes an interrupted
job; the command exits 1 at the end if any input failed or any output was refused as existing.
"""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from latentz.commands import user_errors

if TYPE_CHECKING:
    from latentz.bundle import BundleInfo
    from latentz.codec.limits import SizeLimits

LATENTZ_SUFFIX = ".latentz"
DEFAULT_CODED_PIXELS = 4_194_304
"""`SizeLimits.max_coded_pixels`'s default, kept literal so that --help does not import numpy."""
MAX_CODED_PIXELS_HELP = (
    "Most pixels a photo model codes at once (default 4,194,304 = 2048x2048, about 0.9 GB to decode): "
    "bigger images are scaled down, bigger files refused."
)
DECODED_SUFFIX = ".png"
"""Folder decode writes PNG (lossless); a single file is written in the format its name gives."""

IMAGE_OUTPUTS: dict[str, tuple[str, dict[str, object]]] = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": 95, "subsampling": 0}),
    ".jpeg": ("JPEG", {"quality": 95, "subsampling": 0}),
    ".webp": ("WEBP", {"lossless": True}),
    ".bmp": ("BMP", {}),
    ".tif": ("TIFF", {}),
    ".tiff": ("TIFF", {}),
}
"""What `latentz decode -o NAME` writes, by NAME's extension: JPEG at quality 95 (4:4:4), WebP lossless."""
IMAGE_OUTPUTS_TEXT = ".png, .jpg/.jpeg (JPEG quality 95), .webp (lossless WebP), .bmp or .tif/.tiff"
IMAGE_SUFFIXES = (*IMAGE_OUTPUTS, ".gif")

# How each input ended: only WRITTEN made a file. EXISTS (the output was there, the run was not
# told to skip or overwrite it) is reported once for all files, not one error per file.
WRITTEN, SKIPPED, EXISTS, FAILED = "written", "skipped", "exists", "failed"


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@dataclass(frozen=True)
class EncodeJob:
    """One image to compress; plain data so it can travel to a worker process. ``model`` None: the
    installed model that fits this image (`latentz.choice`); ``quality`` and ``step`` None: the
    model's recommended quality."""

    model: str | None
    source: Path
    target: Path
    quality: int | None
    step: float | None
    force: bool
    skip_existing: bool = False
    max_coded_pixels: int = DEFAULT_CODED_PIXELS


@dataclass(frozen=True)
class DecodeJob:
    """One .latentz file to decode; ``model`` None means: find it by the file's fingerprint."""

    model: str | None
    source: Path
    target: Path
    force: bool
    skip_existing: bool = False
    max_coded_pixels: int = DEFAULT_CODED_PIXELS


@dataclass(frozen=True)
class Outcome:
    """How one input ended: the line printed for it, and the figures `--json` reports and the folder
    summary averages (``psnr`` and ``quality`` are encode's only)."""

    source: Path
    message: str
    status: str = WRITTEN
    target: Path | None = None
    coded_bytes: int | None = None
    bpp: float | None = None
    psnr: float | None = None
    seconds: float | None = None
    model: str | None = None
    model_reason: str | None = None
    model_kind: str | None = None
    quality: int | None = None
    quality_reason: str | None = None
    step: float | None = None
    note: str | None = None
    warning: str | None = None
    error: str | None = None
    input_bytes: int | None = None
    width: int | None = None
    height: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in (WRITTEN, SKIPPED)

    def record(self) -> dict[str, Any]:
        """The outcome as `--json` prints it: every field, paths as strings, no message."""
        return {
            "source": str(self.source),
            "target": None if self.target is None else str(self.target),
            "status": self.status,
            "model": self.model,
            "model_reason": self.model_reason,
            "quality": self.quality,
            "quality_reason": self.quality_reason,
            "step": self.step,
            "input_bytes": self.input_bytes,
            "bytes": self.coded_bytes,
            "bpp": _rounded(self.bpp, 4),
            "psnr": _rounded(self.psnr, 3),
            "seconds": _rounded(self.seconds, 6),
            "width": self.width,
            "height": self.height,
            "note": self.note,
            "warning": self.warning,
            "error": self.error,
        }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def _limits(max_coded_pixels: int) -> SizeLimits:
    from latentz.codec.limits import SizeLimits

    return SizeLimits(max_coded_pixels=max_coded_pixels, raise_with="--max-coded-pixels")


def _check_target(target: Path, force: bool) -> None:
    """Refuse early (before any work) an output that is already there; the write checks again."""
    from latentz.bundle import TargetExistsError

    if not force and os.path.lexists(target):
        raise TargetExistsError(target)


def _write(target: Path, data: bytes, force: bool) -> None:
    from latentz.bundle import atomic_write_bytes

    atomic_write_bytes(target, data, overwrite=force)


def _ratio(original: int, coded: int) -> str:
    """'3.2x smaller' or '1.03x larger than the input': a bigger file is never called smaller."""
    if coded == original:
        return "the same size as the input"
    factor = original / coded if coded < original else coded / original
    shown = f"{factor:.2f}" if factor < 10 else f"{factor:.1f}"
    return f"{shown}x smaller" if coded < original else f"{shown}x larger than the input"


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


_WARM: set[tuple[str, bool]] = set()


def _warm_up(runtime: Any, encoder: bool) -> None:
    """Run the whole pipeline once per process on a blank image, outside the timing, so the time
    printed per file is the file's, not start-up (Pillow's plugins, the range coder and ONNX
    Runtime's first run cost 100-300 ms on the first digit)."""
    import numpy as np

    from latentz import codec, imaging

    key = (str(runtime.info.path), encoder)
    if key in _WARM:
        return
    config = runtime.config
    blank = np.zeros((config.image_size, config.image_size, config.channels), np.uint8)
    if encoder:
        data = runtime.compress(runtime.prepare(imaging.png_bytes(blank)).image)
    else:  # a receiver may have no encoder: code a zero latent directly
        data = codec.encode_latent(
            np.zeros(config.latent_shape(), np.float32),
            entropy=runtime.entropy,
            step=codec.step_for_quality(75),
            fingerprint=runtime.fingerprint,
            height=config.image_size,
            width=config.image_size,
            channels=config.channels,
        )
    runtime.decompress(data)
    _WARM.add(key)


@functools.cache
def _warm_pillow() -> None:
    """Open one image per process outside the timing: Pillow registers its plugins on first use."""
    import numpy as np

    from latentz import imaging

    imaging.open_image(imaging.png_bytes(np.zeros((8, 8, 1), np.uint8)))


@functools.cache
def installed_models() -> tuple[BundleInfo, ...]:
    """The installed models that can encode, read once per process (the choice rule's candidates)."""
    from latentz import choice

    return tuple(choice.encoding_models())


def encode_file(job: EncodeJob) -> Outcome:
    """Compress one image, check the round trip, write the file; raises on bad input.

    The time is the file's own: opening, preparing and compressing it, not the choice of model or
    the one-off start-up of each model (see `_warm_up`).
    """
    from latentz import choice, codec, imaging, metrics
    from latentz import runtime as rt

    _check_target(job.target, job.force)
    limits = _limits(job.max_coded_pixels)
    _warm_pillow()
    started = time.perf_counter()
    image = imaging.open_image(job.source, max_pixels=limits.max_image_pixels)
    opening = time.perf_counter() - started
    width, height = image.size
    channels = choice.image_channels(image)
    model_reason = model_kind = None
    if job.model is None:
        picked = choice.choose_model(width, height, channels, installed_models())
        runtime = rt.load(picked.info.path)
        model_reason, model_kind, warning = picked.reason, picked.kind, picked.warning
    else:
        runtime = rt.load(job.model)
        warning = choice.fit_warning(runtime.info, width, height, channels, installed_models())
    quality, quality_reason = job.quality, None
    if quality is None and job.step is None:
        recommended = choice.recommended_quality(runtime.config)
        quality, quality_reason = recommended.quality, recommended.reason
    fine_step = codec.step_from_units(job.step) if job.step is not None else codec.step_for_quality(quality)
    _warm_up(runtime, encoder=True)
    started = time.perf_counter()
    prepared = runtime.prepare(image, limits)
    data = runtime.compress(prepared.image, quality=quality, step=job.step)
    seconds = opening + time.perf_counter() - started
    decoded = runtime.decompress(data, limits)
    _write(job.target, data, job.force)
    original_bytes = job.source.stat().st_size
    psnr = metrics.psnr(prepared.image[None], decoded[None])
    coded_height, coded_width = prepared.image.shape[:2]
    bpp = 8 * len(data) / (coded_width * coded_height)
    return Outcome(
        job.source,
        f"{job.source.name}: {original_bytes:,} B -> {len(data):,} B ({_ratio(original_bytes, len(data))}), "
        f"{bpp:.3f} bpp, PSNR {psnr:.2f} dB, {_milliseconds(seconds)}; {prepared.note}",
        target=job.target,
        coded_bytes=len(data),
        bpp=bpp,
        psnr=psnr,
        seconds=seconds,
        model=runtime.name,
        model_reason=model_reason,
        model_kind=model_kind,
        quality=quality,
        quality_reason=quality_reason,
        step=fine_step / codec.FINE_PER_UNIT,
        note=prepared.note,
        warning=warning,
        input_bytes=original_bytes,
        width=coded_width,
        height=coded_height,
    )


def read_latentz_file(path: Path) -> bytes:
    """A .latentz file's bytes, refusing one over the format's size cap from its size on disk, unread."""
    from latentz.codec import LatentzFormatError
    from latentz.codec.format import MAX_FILE_BYTES

    if not path.is_file():
        raise LatentzFormatError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise LatentzFormatError(
            f"{path} is {size:,} bytes, more than the {MAX_FILE_BYTES:,} a .latentz file may have (not read)"
        )
    with open(path, "rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)  # bounded even if the file grows after the check
    if len(data) > MAX_FILE_BYTES:
        raise LatentzFormatError(f"{path} grew past the {MAX_FILE_BYTES:,} bytes a .latentz file may have")
    return data


def image_output_format(target: Path) -> tuple[str, dict[str, object]]:
    """Pillow format and options for a decoded image, from its name's extension; refuses any other."""
    try:
        return IMAGE_OUTPUTS[target.suffix.lower()]
    except KeyError:
        got = f"unknown image type '{target.suffix}'" if target.suffix else "no extension"
        raise ValueError(
            f"{target}: {got}; the extension picks the format: name it {IMAGE_OUTPUTS_TEXT}"
        ) from None


def decode_file(job: DecodeJob) -> Outcome:
    """Decode one .latentz file with its model and write the image; raises on bad input."""
    from PIL import Image

    from latentz import codec
    from latentz import runtime as rt

    fmt, options = image_output_format(job.target)
    _check_target(job.target, job.force)
    data = read_latentz_file(job.source)
    runtime = rt.load(job.model) if job.model else rt.model_for_file(data)
    _warm_up(runtime, encoder=False)
    started = time.perf_counter()
    image = runtime.decompress(data, _limits(job.max_coded_pixels))
    seconds = time.perf_counter() - started
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **options)
    _write(job.target, buffer.getvalue(), job.force)
    header, _ = codec.unpack(data)
    height, width = image.shape[:2]
    return Outcome(
        job.source,
        f"{job.source.name} -> {job.target} ({width}x{height}, {runtime.name}, {_milliseconds(seconds)})",
        target=job.target,
        coded_bytes=len(data),
        bpp=8 * len(data) / (width * height),
        seconds=seconds,
        model=runtime.name,
        step=header.step / codec.FINE_PER_UNIT,
        note=f"{width}x{height} {fmt}",
        input_bytes=len(data),
        width=width,
        height=height,
    )


def _guarded(work: Callable[[EncodeJob | DecodeJob], Outcome], job: EncodeJob | DecodeJob) -> Outcome:
    """Run one job; a user error becomes a failed outcome, so one bad file never stops the rest."""
    from latentz.bundle import TargetExistsError

    try:
        return work(job)
    except TargetExistsError as error:  # there before the run, or made meanwhile by another process
        status = SKIPPED if job.skip_existing else EXISTS
        return Outcome(job.source, f"{job.source.name}: {error}", status, target=job.target, note=str(error))
    except user_errors() as error:
        return Outcome(job.source, f"{job.source.name}: {error}", FAILED, error=str(error))


def guarded_encode(job: EncodeJob) -> Outcome:
    return _guarded(encode_file, job)  # type: ignore[arg-type]


def guarded_decode(job: DecodeJob) -> Outcome:
    return _guarded(decode_file, job)  # type: ignore[arg-type]


# -- folders -------------------------------------------------------------------------------------
def distinct_targets(root: Path, sources: list[Path], out: Path, suffix: str) -> list[Path]:
    """One output per input under ``out``, mirroring ``root``'s folders, never two inputs on one name.

    An input becomes ``STEM + suffix`` unless that name (compared ignoring case, so that a
    case-insensitive disk is safe too) is wanted by another input: then each of those keeps its
    whole name, ``NAME + suffix`` (``s00.png.latentz``, ``s00.bmp.latentz``). Repeated until no name
    is shared, which ends because whole names in one folder are distinct.
    """
    relative = [source.relative_to(root) for source in sources]
    whole: set[int] = set()
    while True:
        names = [
            path.with_name(path.name + suffix) if index in whole else path.with_suffix(suffix)
            for index, path in enumerate(relative)
        ]
        claims: dict[str, list[int]] = defaultdict(list)
        for index, name in enumerate(names):
            claims[name.as_posix().casefold()].append(index)
        renamed = {index for group in claims.values() if len(group) > 1 for index in group} - whole
        if not renamed:
            return [out / name for name in names]
        whole |= renamed


def _plan(jobs: list, force: bool, skip_existing: bool) -> tuple[list, dict[int, Outcome]]:
    """Split jobs into work to do and outcomes known up front (outputs that are already there)."""
    if force:
        return jobs, {}
    todo, known = [], {}
    for index, job in enumerate(jobs):
        if os.path.lexists(job.target):
            status = SKIPPED if skip_existing else EXISTS
            exists = f"{job.target} exists"
            known[index] = Outcome(job.source, exists, status, target=job.target, note=exists)
        else:
            todo.append(job)
    return todo, known


def _parent_watchdog(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


def _worker_initializer(parent_pid: int) -> None:
    """Each worker uses one core (the pool provides the parallelism) and dies with its parent.

    A killed parent (SIGTERM, SIGKILL) leaves its workers to the init process; without this they
    would go on writing, then wait forever for work. On Linux the kernel sends SIGKILL when the
    parent dies (prctl PR_SET_PDEATHSIG); the parent-pid check closes the race of a parent that died
    before that was set. Elsewhere a thread polls the parent pid.
    """
    os.environ["OMP_NUM_THREADS"] = "1"
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:
        os._exit(1)
    if not armed:
        threading.Thread(target=_parent_watchdog, args=(parent_pid,), daemon=True).start()


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
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_initializer, initargs=(os.getpid(),)
    ) as pool:
        yield from pool.map(work, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))


def run_folder(work: Callable, jobs: list, workers: int, what: str) -> list[Outcome]:
    """Run the jobs behind a progress bar on stderr (none when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    outcomes = []
    console = Console(stderr=True)
    try:
        with Progress(
            TextColumn(f"[bold]{what}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=True,
            console=console,
            disable=not console.is_terminal,
        ) as bar:
            task = bar.add_task(what, total=len(jobs))
            for outcome in _outcomes(work, jobs, workers):
                outcomes.append(outcome)
                bar.advance(task)
    except KeyboardInterrupt:  # Ctrl-C: every written file is whole; say how to finish the job
        typer.echo(
            f"interrupted: {what} stopped with at least {len(outcomes)} of {len(jobs)} files done; run the "
            "same command with --skip-existing to do the rest",
            err=True,
        )
        raise typer.Exit(130) from None
    return outcomes


def run_planned(
    work: Callable, jobs: list, workers: int, what: str, force: bool, skip_existing: bool
) -> list[Outcome]:
    """All outcomes in input order: those known before starting, then the work done for the rest."""
    todo, known = _plan(jobs, force, skip_existing)
    done = iter(run_folder(work, todo, workers, what) if todo else [])
    return [known[index] if index in known else next(done) for index in range(len(jobs))]


def _means(written: list[Outcome]) -> dict[str, Any] | None:
    """Mean bytes, bpp, PSNR (encode) and time per image of the written files; None if none."""
    coded = [o for o in written if o.coded_bytes is not None]
    if not coded:
        return None
    count = len(coded)
    psnrs = [o.psnr for o in coded if o.psnr is not None]
    return {
        "files": count,
        "bytes": round(sum(o.coded_bytes or 0 for o in coded) / count, 2),
        "bpp": round(sum(o.bpp or 0.0 for o in coded) / count, 4),
        "psnr": round(sum(psnrs) / count, 3) if len(psnrs) == count else None,
        "seconds": round(sum(o.seconds or 0.0 for o in coded) / count, 6),
    }


def _mean_line(means: dict[str, Any] | None) -> str | None:
    if means is None or means["files"] < 2:
        return None
    psnr = f", PSNR {means['psnr']:.2f} dB" if means["psnr"] is not None else ""
    return (
        f"mean of {means['files']} files: {means['bytes']:,.1f} B, {means['bpp']:.3f} bpp{psnr}, "
        f"{_milliseconds(means['seconds'])} per image"
    )


def _setting(outcome: Outcome) -> str:
    if outcome.quality is None:
        return f"step {outcome.step:g}"
    return f"quality {outcome.quality}" + (", its recommended quality" if outcome.quality_reason else "")


def _model_lines(written: list[Outcome]) -> list[str]:
    """For a folder encoded without -m: which model took which files, at which setting."""
    groups: dict[tuple[str | None, str | None, str], list[Outcome]] = defaultdict(list)
    for outcome in written:
        if outcome.model_kind is not None:
            groups[(outcome.model, outcome.model_kind, _setting(outcome))].append(outcome)
    return [
        f"model {model} for {len(group)} file{'s' if len(group) > 1 else ''} ({kind}) at {setting}"
        for (model, kind, setting), group in groups.items()
    ]


def _warning_lines(outcomes: list[Outcome]) -> list[str]:
    """One warning per model that some files did not fit: the first file's, and how many more."""
    groups: dict[str | None, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.warning:
            groups[outcome.model].append(outcome)
    lines = []
    for group in groups.values():
        line = f"warning: {group[0].source.name}: {group[0].warning}"
        if len(group) > 1:
            more = len(group) - 1
            files = f"{more} more file does" if more == 1 else f"{more} more files do"
            line = f"{line.rstrip('.')}; {files} not fit {group[0].model} either (--json lists each)."
        lines.append(line)
    return lines


def _summary(outcomes: list[Outcome]) -> dict[str, Any]:
    by_status: dict[str, int] = defaultdict(int)
    models: dict[str, int] = defaultdict(int)
    for outcome in outcomes:
        by_status[outcome.status] += 1
        if outcome.status == WRITTEN and outcome.model:
            models[outcome.model] += 1
    written = [o for o in outcomes if o.status == WRITTEN]
    return {
        "files": len(outcomes),
        **{status: by_status[status] for status in (WRITTEN, SKIPPED, EXISTS, FAILED)},
        "models": dict(models),
        "mean": _means(written),
    }


def print_json(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, indent=2))


def _report(outcomes: list[Outcome], verb: str, as_json: bool = False, heading: dict | None = None) -> None:
    """One line per written or failed file, the mean, the counts; refused existing outputs get one
    line. With ``as_json`` stdout gets one JSON object (``heading``, the files, the summary) and
    only warnings and errors go to stderr."""
    by_status: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_status[outcome.status].append(outcome)
    written, skipped = by_status[WRITTEN], by_status[SKIPPED]
    existing, failed = by_status[EXISTS], by_status[FAILED]
    if as_json:
        for line in _warning_lines(outcomes):
            typer.echo(line, err=True)
        for outcome in failed:
            typer.echo(f"error: {outcome.message}", err=True)
        summary = _summary(outcomes)
        print_json({**(heading or {}), "files": [o.record() for o in outcomes], "summary": summary})
    else:
        for outcome in outcomes:
            if outcome.status == WRITTEN:
                setting = f"; {outcome.model} at {_setting(outcome)}" if outcome.model_kind else ""
                typer.echo(outcome.message + setting)
            elif outcome.status == FAILED:
                typer.echo(outcome.message, err=True)
        for line in _warning_lines(outcomes):
            typer.echo(line, err=True)
        for line in _model_lines(written):
            typer.echo(line)
        mean = _mean_line(_means(written))
        if mean:
            typer.echo(mean)
        summary_line = f"{verb} {len(written)} of {len(outcomes)} files"
        if skipped:
            summary_line += f"; skipped {len(skipped)} whose output already exists"
        typer.echo(summary_line, err=bool(existing or failed))
    if existing:
        typer.echo(
            f"error: {len(existing)} output(s) already exist and were left as they are (the first: "
            f"{existing[0].target}); pass --skip-existing to finish the job without them, or --force "
            "to overwrite them",
            err=True,
        )
    if failed:
        typer.echo(f"error: {len(failed)} file(s) failed (reasons above)", err=True)
    if existing or failed:
        raise typer.Exit(1)


def _default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_output_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        _fail(f"{out} exists and is not a folder; a folder of inputs needs an output folder")


def _check_flags(force: bool, skip_existing: bool) -> None:
    if force and skip_existing:
        _fail("give --force (overwrite existing outputs) or --skip-existing (keep them), not both")


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
        _fail(f"{outcome.note}; pass --force to overwrite it")
    if outcome.status == FAILED:
        _fail(outcome.error or outcome.message)
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
    @app.command("encode")
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
        from latentz.data import list_image_files

        if quality is not None and step is not None:
            _fail("give --quality or --step, not both")
        _check_flags(force, skip_existing)
        try:
            if model is None and not installed_models():
                raise choice.NoModelError()
            model_path = None if model is None else str(rt.load(model).info.path)  # fail fast if bad
            if source.is_dir():
                _check_output_folder(out)
                sources = list_image_files(source)
                if not sources:
                    _fail(f"{source}: no JPEG/PNG/WebP/BMP files found")
                work = [
                    EncodeJob(model_path, s, target, quality, step, force, skip_existing, max_coded_pixels)
                    for s, target in zip(
                        sources, distinct_targets(source, sources, out, LATENTZ_SUFFIX), strict=True
                    )
                ]
                if model_path is not None and quality is None and step is None and not as_json:
                    recommended = choice.recommended_quality(rt.load(model_path).config)
                    typer.echo(f"quality {recommended.quality}, {recommended.reason}; -q sets another")
                outcomes = run_planned(
                    guarded_encode, work, jobs or _default_jobs(), "encoding", force, skip_existing
                )
                _report(outcomes, "encoded", as_json, {"source": str(source), "out": str(out)})
                return
            if out.is_dir():  # like cp: into the folder, under the input's name
                out = out / (source.stem + LATENTZ_SUFFIX)
            if out.suffix.lower() in IMAGE_SUFFIXES:
                _fail(f"{out} names an image; `latentz encode` writes .latentz files (-o NAME.latentz)")
            if out.exists() and source.exists() and out.samefile(source):
                _fail(f"{out} is the input itself; give another output name")
        except user_errors() as error:
            _fail(str(error))
        job = EncodeJob(model_path, source, out, quality, step, force, skip_existing, max_coded_pixels)
        _report_one(guarded_encode(job), as_json, wrote_line=True)

    @app.command("decode")
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
        try:
            if source.is_dir():
                _check_output_folder(out)
                sources = sorted(p for p in source.rglob(f"*{LATENTZ_SUFFIX}") if p.is_file())
                if not sources:
                    _fail(f"{source}: no {LATENTZ_SUFFIX} files found")
                work = [
                    DecodeJob(model, s, target, force, skip_existing, max_coded_pixels)
                    for s, target in zip(
                        sources, distinct_targets(source, sources, out, DECODED_SUFFIX), strict=True
                    )
                ]
                outcomes = run_planned(
                    guarded_decode, work, jobs or _default_jobs(), "decoding", force, skip_existing
                )
                _report(outcomes, "decoded", as_json, {"source": str(source), "out": str(out)})
                return
            if out.is_dir():
                out = out / (source.stem + DECODED_SUFFIX)
            image_output_format(out)  # an unknown extension is refused before any work
        except user_errors() as error:
            _fail(str(error))
        job = DecodeJob(model, source, out, force, skip_existing, max_coded_pixels)
        _report_one(guarded_decode(job), as_json, wrote_line=False)
