"""The run folder: what it may hold before a run starts, what a run writes into it, the bundle it becomes.

While training it holds ``train_config.json``, ``metrics.jsonl`` (one JSON line per finished epoch)
and ``checkpoint/last.pt``; at the end the bundle files (see :mod:`latentz.bundle`) are written
beside them, ``card.json`` last so a half-written folder never looks like a bundle.

Crash safety: every file is written whole and renamed into place (`latentz.files`), so a run
killed at any moment leaves the previous checkpoint as the latest; ``resume`` continues from it
(or starts over if the run was killed before its first checkpoint) and tidies what the kill left
behind. Errors writing the folder (read-only, disk full) stop the run with a one-line
`TrainingError` that says what is kept. Only the main process of a distributed run calls these.
"""

from __future__ import annotations

import json
import platform
import shlex
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

import latentz
from latentz import bundle, export, files
from latentz.config import ModelConfig, TrainConfig, from_dict, to_dict
from latentz.data import TrainingData
from latentz.models import build_model, count_parameters, posterior, save_weights
from latentz.train import snapshot
from latentz.train.errors import TrainingError
from latentz.train.figures import write_plots
from latentz.train.snapshot import RunState
from latentz.train.validation import latent_stats

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "last.pt"
METRICS_FILE = "metrics.jsonl"
TRAIN_CONFIG_FILE = bundle.TRAIN_CONFIG_FILE
#: Free space a run folder needs beyond its checkpoint and bundle files (plots, metrics, margin).
FOLDER_SPACE_MARGIN_BYTES = 16 * 1024 * 1024


def checkpoint_path(out_dir: Path) -> Path:
    return out_dir / CHECKPOINT_DIR / CHECKPOINT_FILE


def open_run(out_dir: Path, config: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """Check the folder can take this run; returns the checkpoint to continue from, if any.

    A ``resume`` of a run killed before its first checkpoint is the same run from the start (its
    saved configuration must still match); one with a checkpoint must match the checkpoint's.
    """
    resume_from = _prepare_folder(out_dir, resume)
    _check_free_space(out_dir, config.model)
    if resume_from is None:
        if resume:  # killed before its first checkpoint: the same run, from the start
            saved = from_dict(TrainConfig, json.loads((out_dir / TRAIN_CONFIG_FILE).read_text()))
            snapshot.check_resumable(saved, config, 0)
        return None
    state = snapshot.load_checkpoint(resume_from)
    snapshot.check_resumable(from_dict(TrainConfig, state["config"]), config, state["epoch"])
    return state


def _prepare_folder(out_dir: Path, resume: bool) -> Path | None:
    """Check the run folder can take this run; returns the checkpoint to resume from, if any.

    ``resume`` of a run killed before its first checkpoint (its ``train_config.json`` is there, no
    checkpoint yet) starts it over, so one resume command works whenever a run was stopped.
    """
    checkpoint = checkpoint_path(out_dir)
    if resume:
        _remove_partial_files(out_dir)
        if checkpoint.is_file():
            return checkpoint
        started = (out_dir / TRAIN_CONFIG_FILE).is_file() and not (out_dir / METRICS_FILE).exists()
        if not started:
            raise TrainingError(
                f"nothing to resume: {checkpoint} does not exist (train without --resume first)"
            )
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainingError(f"output path {out_dir} exists and is not a folder")
    occupied = [
        name
        for name in (
            f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}",
            METRICS_FILE,
            bundle.WEIGHTS_FILE,
            bundle.CARD_FILE,
        )
        if (out_dir / name).exists()
    ]
    if occupied and not resume:
        raise TrainingError(
            f"{out_dir} already holds a training run ({', '.join(occupied)}); pass --resume to "
            f"continue it, or choose another output folder"
        )
    _check_writable(out_dir)
    return None


def _remove_partial_files(out_dir: Path) -> None:
    """Delete the temporary files of writes a kill interrupted: every writer here (checkpoints,
    bundle files, ONNX, plots) writes a hidden temporary file and renames it into place."""
    patterns = {out_dir: ".*.tmp", out_dir / CHECKPOINT_DIR: ".*.tmp", out_dir / bundle.PLOTS_DIR: ".*.png"}
    for folder, pattern in patterns.items():
        for partial in folder.glob(pattern):
            partial.unlink(missing_ok=True)


def _check_writable(out_dir: Path) -> None:
    """Fail before any training if the run folder (or the folder it will be made in) is read-only."""
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise TrainingError(
            f"cannot write to {existing} ({error.strerror or error}); choose an output folder you "
            f"can write to"
        ) from None


def _writing(what: str, path: Path, action: Callable[[], None], *, after: str) -> None:
    """Run a write; an OSError (disk full, read-only, quota) becomes one clear TrainingError."""
    try:
        action()
    except OSError as error:
        raise TrainingError(f"cannot write {what} {path} ({error.strerror or error}); {after}") from None


def _check_free_space(out_dir: Path, model_config: ModelConfig) -> None:
    """Refuse to start when the disk cannot hold a checkpoint and the bundle (a rough upper bound).

    A checkpoint holds the weights and Adam's two moments, and is briefly on disk twice while it
    replaces the previous one; the bundle holds the weights again and two ONNX halves.
    """
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    with torch.device("meta"):  # the parameter count without allocating or drawing random numbers
        weights_bytes = 4 * count_parameters(build_model(model_config))
    needed = weights_bytes * (3 * 2 + 3) + FOLDER_SPACE_MARGIN_BYTES
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise TrainingError(
            f"not enough disk space in {existing}: this run needs about {needed / 1e6:,.0f} MB for its "
            f"checkpoints and bundle, {free / 1e6:,.0f} MB are free"
        )


def start_folder(out_dir: Path, config: TrainConfig, history: list[dict[str, Any]]) -> None:
    """Create the run folder with its config; a resumed run's metrics are rewritten from its checkpoint
    (a kill between writing the checkpoint and the metrics leaves the metrics one epoch behind)."""
    _writing(
        "the run configuration",
        out_dir / TRAIN_CONFIG_FILE,
        lambda: files.atomic_write_json(out_dir / TRAIN_CONFIG_FILE, to_dict(config)),
        after="choose an output folder you can write to",
    )
    if history:
        write_metrics(out_dir, history)


def write_metrics(out_dir: Path, history: list[dict[str, Any]]) -> None:
    # Rewritten whole (not appended) so it always agrees with the checkpoint after a crash.
    lines = "".join(json.dumps(r) + "\n" for r in history)
    _writing(
        "metrics",
        out_dir / METRICS_FILE,
        lambda: files.atomic_write_bytes(out_dir / METRICS_FILE, lines.encode()),
        after=f"the checkpoint of epoch {len(history)} is saved: free space and continue with --resume",
    )


def save_progress(out_dir: Path, state: dict[str, Any]) -> None:
    """The checkpoint, then the metrics it includes; each replaces its previous version whole."""
    done = state["epoch"] - 1
    kept = (
        f"the checkpoint of epoch {done} is intact: free space and continue with --resume"
        if done > 0
        else "nothing was checkpointed yet: free space and run again (--resume starts it over)"
    )
    path = checkpoint_path(out_dir)
    _writing("the checkpoint", path, lambda: snapshot.save_checkpoint(path, state), after=kept)
    write_metrics(out_dir, state["history"])


def finish_bundle(
    run: RunState, config: TrainConfig, out_dir: Path, data: TrainingData, command: Sequence[str] | None
) -> None:
    """`write_bundle`, with a folder that cannot take it (disk full) said in one line."""
    try:
        write_bundle(run, config, out_dir, data, command)
    except OSError as error:
        raise TrainingError(
            f"cannot write the bundle into {out_dir} ({error.strerror or error}); the final "
            f"checkpoint is saved: free space and run again with --resume to write the bundle"
        ) from None


def write_bundle(
    run: RunState, config: TrainConfig, out_dir: Path, data: TrainingData, command: Sequence[str] | None
) -> None:
    """Weights, configs and plots first, ``card.json`` last: a folder with a card is complete.

    Runs on the CPU whatever the model trained on: export and plots expect CPU tensors. The
    ONNX files, the entropy model and their card fields come from `latentz.export.finish_bundle`,
    the one place a bundle is finished (`latentz export` refits through it too).
    """
    model = run.model.cpu().eval()
    weights = out_dir / bundle.WEIGHTS_FILE
    save_weights(model, weights)
    files.atomic_write_json(out_dir / bundle.CONFIG_FILE, to_dict(config.model))
    files.atomic_write_json(out_dir / TRAIN_CONFIG_FILE, to_dict(config))
    mean, logvar = posterior(model, data.train)
    stats = latent_stats(mean, logvar)
    finished = export.finish_bundle(model, out_dir, data.train, data.val, data.spec, (mean, logvar))
    write_plots(model, data, run.history, out_dir / bundle.PLOTS_DIR, stats["kl"])
    card = {
        "name": out_dir.resolve().name,
        **_run_fields(run, data, command),
        "fingerprint": files.sha256_file(weights),
        "latent_stats": stats,
        **finished,
        "parameters": count_parameters(model),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    files.atomic_write_json(out_dir / bundle.CARD_FILE, card)


def _run_fields(run: RunState, data: TrainingData, command: Sequence[str] | None) -> dict[str, Any]:
    """The card's account of the run: its data and split, the command, time taken, final metrics."""
    final = run.history[-1]
    argv = list(command) if command else []
    return {
        "data": data.spec,
        "split": data.source_note,
        "skipped_files": data.skipped,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "command": argv,
        "command_line": shlex.join(argv) if argv else "latentz.train.train() called from Python",
        "epochs": final["epoch"],
        "wall_time_s": round(run.elapsed_s, 2),
        "images_per_s": round(len(data.train) * final["epoch"] / max(run.train_s, 1e-9), 1),
        "metrics": {
            key.removeprefix("val_"): value for key, value in final.items() if key.startswith("val_")
        },
        "metrics_note": (
            "validation split; true ELBO (beta = 1) in nats per image; PSNR of the mean reconstruction"
        ),
    }


def _versions() -> dict[str, str]:
    return {
        "latentz": latentz.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
