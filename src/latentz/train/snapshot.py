"""The snapshot of a run: everything an uninterrupted run would still have in memory.

That is the model, the optimiser (Adam's moments and step counts) and every random state: the
global torch RNG (reparameterisation noise), the run's generator (shuffles, crops,
augmentation), numpy's and Python's. Learning-rate and KL schedules are pure functions of the
epoch, so they need no state. `capture` and `restore` are exact inverses, which is why a resumed
run ends with the very weights an uninterrupted one does; `check_resumable` refuses a resume that
would make it a different run. Checkpoints are unpickled weights-only: a checkpoint cannot run code.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentz import files
from latentz.config import ConfigError, TrainConfig, to_dict
from latentz.models import VAE
from latentz.train.errors import TrainingError

CHECKPOINT_FORMAT = 1


@dataclass
class RunState:
    """What a run carries from epoch to epoch; `capture` turns it into a checkpoint."""

    model: VAE
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics row per finished epoch
    epoch: int = 0  # epochs finished
    elapsed_s: float = 0.0  # training and validation time over all calls
    train_s: float = 0.0  # training time alone (for images per second)


def capture(run: RunState, config: TrainConfig, n_train: int) -> dict[str, Any]:
    """The checkpoint of ``run`` after its last finished epoch (tensors shared with the live model)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": to_dict(config),
        "epoch": run.epoch,
        "n_train": n_train,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "rng": _rng_state(run.generator),
        "history": run.history,
        "elapsed_s": run.elapsed_s,
        "train_s": run.train_s,
    }


def restore(state: dict[str, Any], run: RunState) -> None:
    """Put a checkpoint back into a freshly built run: weights, optimiser, every RNG, progress."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    _restore_rng(state["rng"], run.generator)
    run.history = list(state["history"])
    run.epoch, run.elapsed_s, run.train_s = state["epoch"], state["elapsed_s"], state["train_s"]


def check_same_data(state: dict[str, Any], n_train: int) -> None:
    """A checkpoint continues only on the training images it started with."""
    if state["n_train"] != n_train:
        raise TrainingError(
            f"the data changed since the checkpoint: {state['n_train']} training images then, {n_train} now"
        )


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": random.getstate(),
    }


def _restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    files.atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint (weights-only unpickling: a checkpoint cannot run code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise TrainingError(f"cannot read checkpoint {path}: {error.__class__.__name__}: {error}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a latentz training checkpoint")
    return state


def check_resumable(saved: TrainConfig, wanted: TrainConfig, done_epochs: int) -> None:
    """Refuse to resume with a config that would make the continued run a different run."""
    saved_fields, wanted_fields = to_dict(saved), to_dict(wanted)
    changed = sorted(k for k in saved_fields if k != "epochs" and saved_fields[k] != wanted_fields[k])
    if changed:
        details = "; ".join(f"{k}: {saved_fields[k]!r} -> {wanted_fields[k]!r}" for k in changed)
        raise ConfigError(
            f"cannot resume with a different configuration ({details}); "
            f"resume with the original settings or train into a new folder"
        )
    if wanted.epochs != saved.epochs and saved.lr_schedule == "cosine":
        raise ConfigError(
            f"cannot change epochs from {saved.epochs} to {wanted.epochs} on resume: the cosine "
            f"learning-rate schedule depends on the run length (train with --lr-schedule constant "
            f"to extend runs later)"
        )
    if wanted.epochs < done_epochs:
        raise ConfigError(
            f"the checkpoint has already trained {done_epochs} epochs; --epochs {wanted.epochs} is fewer"
        )
