"""The folder machinery of `latentz encode` and `latentz decode`: one output name per input, the work
spread over worker processes that die with the command, and the report of how each input ended.

In folder mode every output name is decided before any work: inputs in one folder whose names
differ only in their extension or letter case (``s00.png``, ``s00.bmp``) all keep their extension
(``s00.png.latentz``, ``s00.bmp.latentz``), every other file becomes ``STEM.latentz``. A bad input is
reported and the rest go on; ``--skip-existing`` finishes an interrupted job; the command exits 1 at
the end if any input failed or any output was refused as existing.
"""

from __future__ import annotations

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
from typing import Any

import typer

# How each input ended: only WRITTEN made a file. EXISTS (the output was there, the run was not
# told to skip or overwrite it) is reported once for all files, not one error per file.
WRITTEN, SKIPPED, EXISTS, FAILED = "written", "skipped", "exists", "failed"


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
    reached: dict[str, Any] | None = None
    """With a rate target: `latentz.targets.TargetResult.record` (target, quality, reached, met)."""

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
            **({key: self.reached[key] for key in ("target", "reached", "met")} if self.reached else {}),
        }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


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
        f"{milliseconds(means['seconds'])} per image"
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


def _report_json(outcomes: list[Outcome], failed: list[Outcome], heading: dict | None) -> None:
    """`report` with ``--json``: warnings and errors on stderr, one JSON object on stdout."""
    for line in _warning_lines(outcomes):
        typer.echo(line, err=True)
    for outcome in failed:
        typer.echo(f"error: {outcome.message}", err=True)
    summary = _summary(outcomes)
    print_json({**(heading or {}), "files": [o.record() for o in outcomes], "summary": summary})


def _report_lines(
    outcomes: list[Outcome], verb: str, written: list[Outcome], skipped: list[Outcome], to_stderr: bool
) -> None:
    """`report` as lines: each written or failed file, the warnings, the models, the mean, the counts."""
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
    typer.echo(summary_line, err=to_stderr)


def report(outcomes: list[Outcome], verb: str, as_json: bool = False, heading: dict | None = None) -> None:
    """One line per written or failed file, the mean, the counts; refused existing outputs get one
    line. With ``as_json`` stdout gets one JSON object (``heading``, the files, the summary) and
    only warnings and errors go to stderr."""
    by_status: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_status[outcome.status].append(outcome)
    written, skipped = by_status[WRITTEN], by_status[SKIPPED]
    existing, failed = by_status[EXISTS], by_status[FAILED]
    if as_json:
        _report_json(outcomes, failed, heading)
    else:
        _report_lines(outcomes, verb, written, skipped, to_stderr=bool(existing or failed))
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


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
