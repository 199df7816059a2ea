"""The training loop: seeded, resumable to the bit, NaN-safe; its output folder becomes a bundle.

A run folder holds ``train_config.json``, ``metrics.jsonl`` (one JSON line per finished epoch) and
``checkpoint/last.pt`` while training; at the end the bundle files (see :mod:`latentz.bundle`) are
written beside them, ``card.json`` last so a half-written folder never looks like a bundle.

Reproducibility rests on three things: every random draw comes from a seeded source (the global
torch RNG for the reparameterisation noise, one ``torch.Generator`` for shuffling and
augmentation, a fresh fixed-seed generator for validation noise), batches are plain index slices
of a uint8 tensor (no DataLoader workers), and the checkpoint stores every RNG state together with
the model and optimizer. The learning rate is a pure function of training progress, so there is
no scheduler state that could drift. Resuming therefore reproduces an uninterrupted run exactly.

Under torchrun the same loop runs in every process (:mod:`latentz.distributed`): each computes its
share of every global batch and only rank 0 touches the run folder. Photo folders are read batch by
batch from their memory-mapped cache (:mod:`latentz.folder_cache`), so memory does not grow with
the folder.

Crash safety: every file is written whole and renamed into place, so a run killed at any moment
leaves the previous checkpoint as the latest; ``resume`` continues from it (or starts over if the
run was killed before its first checkpoint) and tidies what the kill left behind. Errors writing
the folder (read-only, disk full) stop the run with a one-line `TrainingError`.
"""

from __future__ import annotations

import io
import json
import math
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

import latentz
from latentz import bundle, distributed, export
from latentz.config import ConfigError, ModelConfig, TrainConfig, from_dict, to_dict
from latentz.data import load_dataset
from latentz.distributed import Context, ShardObjective
from latentz.evaluation import CONTINUOUS_LIKELIHOODS, bits_per_dim
from latentz.folder_cache import ImageRows
from latentz.metrics import psnr_per_image
from latentz.models import VAE, build_model, count_parameters, save_weights

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "last.pt"
METRICS_FILE = "metrics.jsonl"
TRAIN_CONFIG_FILE = bundle.TRAIN_CONFIG_FILE
CHECKPOINT_FORMAT = 1

#: The train/val split never depends on the training seed, so runs with different seeds (and
#: `latentz eval` afterwards) are all measured on the same validation images.
SPLIT_SEED = 0
#: Validation noise is redrawn from this seed every epoch, so epoch-to-epoch changes in the
#: validation ELBO come from the model, not from the Monte-Carlo sample.
VAL_NOISE_SEED = 1234
#: The cosine schedule ends at this fraction of the initial learning rate.
FINAL_LR_FRACTION = 0.1
#: How much faster than the network weights a learned pixel scale (gaussian-learned) adapts.
LOG_SCALE_LR_FACTOR = 10.0
EVAL_BATCH = 512
#: Free space a run folder needs beyond its checkpoint and bundle files (plots, metrics, margin).
FOLDER_SPACE_MARGIN_BYTES = 16 * 1024 * 1024
MAX_TRAVERSAL_DIMS = 16
TRAVERSAL_VALUES = (-3.0, -2.25, -1.5, -0.75, 0.0, 0.75, 1.5, 2.25, 3.0)


class TrainingError(RuntimeError):
    """A run that cannot start or continue: diverged loss, nothing to resume, an occupied folder."""


#: Images as training holds them: a uint8 (N, H, W, C) tensor in memory, or a folder cache's rows.
Images = Tensor | ImageRows


@dataclass
class TrainingData:
    train: Images  # uint8 (N, H, W, C)
    val: Images
    val_labels: np.ndarray | None
    spec: str
    source_note: str
    skipped: int


# -- schedules --------------------------------------------------------------------------------
def kl_weight_at(config: TrainConfig, epoch_progress: float) -> float:
    """KL weight after ``epoch_progress`` epochs (fractional): a linear ramp from 0 up to beta."""
    if config.kl_warmup_epochs <= 0:
        return config.beta
    return config.beta * min(1.0, epoch_progress / config.kl_warmup_epochs)


def lr_at(config: TrainConfig, epoch_progress: float) -> float:
    """Learning rate after ``epoch_progress`` epochs: constant, or a half cosine from lr to lr/10."""
    if config.lr_schedule == "constant":
        return config.lr
    fraction = min(1.0, epoch_progress / config.epochs)
    return config.lr * (
        FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * fraction))
    )


# -- data -------------------------------------------------------------------------------------
def load_training_data(config: TrainConfig, *, lazy: bool = False, progress: bool = False) -> TrainingData:
    """The run's train and validation images, exactly as training sees them (split, limit, size).

    ``lazy`` leaves a photo folder's images in its memory-mapped cache (built first if needed, with
    a progress bar if ``progress``); the images are the same, read a batch at a time.
    """
    model = config.model
    sets = {
        split: load_dataset(
            config.data,
            split=split,
            image_size=model.image_size,
            channels=model.channels,
            val_fraction=config.val_fraction,
            seed=SPLIT_SEED,
            limit=split_limit(config, split),
            lazy=lazy,
            progress=progress and split == "train",
        )
        for split in ("train", "val")
    }
    expected = (model.image_size, model.image_size, model.channels)
    for split, images in sets.items():
        if images.images.shape[1:] != expected:
            raise ConfigError(
                f"the {split} images of {config.data} are {images.images.shape[1:]} (H, W, C) but the model "
                f"expects {expected}; set --image-size/--channels to match"
            )
        if len(images.images) == 0:
            raise TrainingError(
                f"the {split} split of {config.data} is empty; use more images or another --val-fraction"
            )
    train_set, val_set = sets["train"], sets["val"]
    return TrainingData(
        train=_in_memory_unless_cached(train_set.images),
        val=_in_memory_unless_cached(val_set.images),
        val_labels=val_set.labels,
        spec=train_set.spec,
        source_note=train_set.source_note,
        skipped=train_set.skipped + val_set.skipped,
    )


def _in_memory_unless_cached(images: np.ndarray | ImageRows) -> Images:
    if isinstance(images, ImageRows):
        return images
    return torch.from_numpy(np.ascontiguousarray(images).copy())


def images_at(images: Images, index: Tensor | slice | list[int]) -> Tensor:
    """The images at ``index`` as a uint8 tensor, whether they are in memory or in a folder cache."""
    if isinstance(images, Tensor):
        return images[index]
    return torch.from_numpy(images[index.numpy() if isinstance(index, Tensor) else index])


def _numpy(images: Images) -> np.ndarray | ImageRows:
    """A numpy view for numpy consumers (a folder cache's rows already index like one)."""
    return images.numpy() if isinstance(images, Tensor) else images


def split_limit(config: TrainConfig, split: str) -> int | None:
    """``max_train_images`` caps the training split; validation shrinks in the same proportion."""
    cap = config.max_train_images
    if cap is None or split == "train":
        return cap
    return max(1, math.ceil(cap * config.val_fraction / (1 - config.val_fraction)))


def to_float(batch: Tensor) -> Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1], the layout the networks take."""
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(images: Tensor) -> np.ndarray:
    """float (N, C, H, W) in [0, 1] -> uint8 (N, H, W, C), rounding like every other tool here."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().contiguous().numpy()


def augment_batch(x: Tensor, generator: torch.Generator) -> Tensor:
    """Photo augmentation: random flip, small reflect-padded shift-crop, mild colour jitter.

    Small on purpose: the model should still reconstruct the data set's own framing and colours.
    All draws come from ``generator`` so augmented runs stay reproducible and resumable.
    """
    n, channels, height, width = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    pad = max(1, min(height, width) // 16)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    rows = (offsets[:, 0:1] + torch.arange(height)).view(n, 1, height, 1)
    cols = (offsets[:, 1:2] + torch.arange(width)).view(n, 1, 1, width)
    x = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(channels).view(1, channels, 1, 1), rows, cols]

    def jitter(strength: float) -> Tensor:
        return 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * strength

    x = x * jitter(0.1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * jitter(0.1) + mean
    if channels == 3:
        grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        x = (x - grey) * jitter(0.1) + grey
    return x.clamp_(0.0, 1.0)


def random_crop(x: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """A random ``size`` x ``size`` window of every image, each at its own position."""
    n, channels, height, width = x.shape
    if size >= height and size >= width:
        return x
    tops = torch.randint(0, height - size + 1, (n, 1), generator=generator)
    lefts = torch.randint(0, width - size + 1, (n, 1), generator=generator)
    rows = (tops + torch.arange(size)).view(n, 1, size, 1)
    cols = (lefts + torch.arange(size)).view(n, 1, 1, size)
    return x[torch.arange(n).view(n, 1, 1, 1), torch.arange(channels).view(1, channels, 1, 1), rows, cols]


# -- evaluation -------------------------------------------------------------------------------
@torch.no_grad()
def validate(model: VAE, images: Images, batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """True (beta = 1) ELBO terms per image and PSNR of the mean reconstruction, with fixed noise."""
    generator = torch.Generator().manual_seed(VAL_NOISE_SEED)
    device = next(model.parameters()).device
    totals = {"neg_elbo": 0.0, "recon": 0.0, "kl": 0.0}
    psnrs = []
    was_training = model.training
    model.eval()
    for start in range(0, len(images), batch_size):
        batch = images_at(images, slice(start, start + batch_size))
        x = to_float(batch).to(device)
        mean, logvar = model.encode(x)
        z = mean + torch.randn(mean.shape, generator=generator).to(device) * (0.5 * logvar).exp()
        recon = -model.log_likelihood(x, model.decode(z))
        kl = model.kl_divergence(mean, logvar)
        totals["recon"] += float(recon.sum())
        totals["kl"] += float(kl.sum())
        totals["neg_elbo"] += float((recon + kl).sum())
        psnrs.append(psnr_per_image(batch.numpy(), to_uint8(model.decode_mean(mean))))
    model.train(was_training)
    metrics = {key: value / len(images) for key, value in totals.items()}
    # Mean of per-image PSNRs (what metrics.psnr and `latentz eval` report), batch by batch.
    metrics["psnr"] = float(np.mean(np.concatenate(psnrs)))
    return metrics


@torch.no_grad()
def posterior_means(model: VAE, images: Images, batch_size: int = EVAL_BATCH) -> tuple[Tensor, Tensor]:
    """Posterior means and log-variances for every image, in batches."""
    means, logvars = [], []
    for start in range(0, len(images), batch_size):
        mean, logvar = model.encode(to_float(images_at(images, slice(start, start + batch_size))))
        means.append(mean)
        logvars.append(logvar)
    return torch.cat(means), torch.cat(logvars)


def latent_stats(mean: Tensor, logvar: Tensor) -> dict[str, list[float]]:
    """Per-channel statistics of posterior means (N, C, ...), plus the mean KL per channel.

    The explorer sets its slider ranges from p1/p99; ``kl`` (nats, summed over a channel's
    positions for spatial latents) says which channels are in use.
    """
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    channels = mean.shape[1]
    means = mean.double().movedim(1, 0).reshape(channels, -1).numpy()
    kl_per_channel = kl.double().flatten(2).sum(2) if kl.ndim > 2 else kl.double()
    return {
        "mean": means.mean(1).tolist(),
        "std": means.std(1).tolist(),
        "p1": np.percentile(means, 1, axis=1).tolist(),
        "p99": np.percentile(means, 99, axis=1).tolist(),
        "kl": kl_per_channel.mean(0).tolist(),
    }


def make_optimizer(model: VAE, config: TrainConfig) -> torch.optim.Adam:
    """Adam; a learned pixel scale gets a larger step so it tracks the reconstruction error.

    Adam moves each parameter by about ``lr`` per step, so at lr 1e-3 a log-scale that starts at
    log(0.1) would need thousands of steps to reach the real error level, and until then the
    reconstruction term is mis-weighted against the KL. With 10x it settles within ~100 steps.
    """
    scale = [p for name, p in model.named_parameters() if name == "log_scale"]
    rest = [p for name, p in model.named_parameters() if name != "log_scale"]
    groups: list[dict[str, Any]] = [{"params": rest, "lr_factor": 1.0}]
    if scale:
        groups.append({"params": scale, "lr_factor": LOG_SCALE_LR_FACTOR})
    return torch.optim.Adam(groups, lr=config.lr)


# -- checkpoints ------------------------------------------------------------------------------
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


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    bundle.atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint (weights-only unpickling: a checkpoint cannot run code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise TrainingError(f"cannot read checkpoint {path}: {error.__class__.__name__}: {error}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a latentz training checkpoint")
    return state


def _check_resumable(saved: TrainConfig, wanted: TrainConfig, done_epochs: int) -> None:
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


# -- the loop ---------------------------------------------------------------------------------
def describe_figures(config: TrainConfig) -> str:
    """What the progress bar and the epoch lines report, said once before the first epoch."""
    model = config.model
    text = (
        "Figures: the negative ELBO (beta = 1, as `latentz eval` reports it) per image in nats, and "
        "in bits per dimension of the 8-bit pixels. The bar and each epoch's train figure are means "
        "over that epoch's batches so far, taken while the weights change; val is measured after the epoch."
    )
    if model.likelihood in CONTINUOUS_LIKELIHOODS:
        text += (
            f" A {model.likelihood} likelihood is a density on [0, 1], so its nats per image drop below "
            "zero once the model fits well; bits/dim add ln 256 nats per dimension (the chance of each "
            "8-bit level) and stay above zero."
        )
    if config.crop_size is not None and config.crop_size < model.image_size:
        text += (
            f" Training sees {config.crop_size}x{config.crop_size} crops, so train nats are per crop and "
            f"val nats per {model.image_size}x{model.image_size} image: compare them in bits/dim."
        )
    return text


class _Progress:
    """A rich progress bar on a terminal (with images/s and ETA), one summary line per epoch.

    Both show the same quantity, the true (beta = 1) negative ELBO per image in nats and in bits
    per dimension: the bar its running mean over the epoch, the epoch line the whole epoch's mean
    beside the validation figure. The bar used to show the weighted loss of a single batch, which
    for two-image photo batches jumped by thousands of nats from one step to the next.
    """

    def __init__(self, enabled: bool, total_images: int, done_images: int, config: TrainConfig) -> None:
        self.enabled = enabled
        self.bar = None
        if not enabled:
            return
        from rich.console import Console

        model = config.model
        side = model.image_size if config.crop_size is None else min(config.crop_size, model.image_size)
        self.train_dims = model.channels * side * side
        self.val_dims = model.num_pixels
        self.likelihood = model.likelihood
        self.console = Console(stderr=True)
        self.console.print(describe_figures(config), highlight=False, soft_wrap=True)
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>7.0f} img/s  {task.fields[figure]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.bar.add_task(
                "training",
                total=total_images,
                completed=done_images,
                rate=0.0,
                figure="-ELBO after the first batch",
            )
            self.bar.start()

    def update(self, description: str, advance: int, rate: float, neg_elbo_so_far: float) -> None:
        """``neg_elbo_so_far``: the epoch's mean -ELBO per image over the batches done so far."""
        if self.bar is not None:
            bits = bits_per_dim(neg_elbo_so_far, self.train_dims, self.likelihood)
            figure = f"-ELBO {neg_elbo_so_far:,.1f} nats/image = {bits:.3f} bits/dim"
            self.bar.update(self.task, description=description, advance=advance, rate=rate, figure=figure)

    def epoch_done(self, row: dict[str, Any], epochs: int) -> None:
        if self.enabled:
            self.console.print(
                f"epoch {row['epoch']}/{epochs}  -ELBO per image: "
                f"train {row['train_neg_elbo']:,.2f} nats = "
                f"{bits_per_dim(row['train_neg_elbo'], self.train_dims, self.likelihood):.4f} bits/dim, "
                f"val {row['val_neg_elbo']:,.2f} nats = "
                f"{bits_per_dim(row['val_neg_elbo'], self.val_dims, self.likelihood):.4f} bits/dim "
                f"(val KL {row['val_kl']:,.2f} nats)  PSNR {row['val_psnr']:.2f} dB  "
                f"{row['images_per_s']:.0f} img/s",
                highlight=False,
                soft_wrap=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _prepare_folder(out_dir: Path, resume: bool) -> Path | None:
    """Check the run folder can take this run; returns the checkpoint to resume from, if any.

    ``resume`` of a run killed before its first checkpoint (its ``train_config.json`` is there, no
    checkpoint yet) starts it over, so one resume command works whenever a run was stopped.
    """
    checkpoint = out_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
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


def _start_folder(out_dir: Path, config: TrainConfig, history: list[dict[str, Any]]) -> None:
    """Create the run folder with its config; a resumed run's metrics are rewritten from its checkpoint
    (a kill between writing the checkpoint and the metrics leaves the metrics one epoch behind)."""
    _writing(
        "the run configuration",
        out_dir / TRAIN_CONFIG_FILE,
        lambda: bundle.atomic_write_json(out_dir / TRAIN_CONFIG_FILE, to_dict(config)),
        after="choose an output folder you can write to",
    )
    if history:
        _write_metrics(out_dir, history)


def _write_metrics(out_dir: Path, history: list[dict[str, Any]]) -> None:
    # Rewritten whole (not appended) so it always agrees with the checkpoint after a crash.
    lines = "".join(json.dumps(r) + "\n" for r in history)
    _writing(
        "metrics",
        out_dir / METRICS_FILE,
        lambda: bundle.atomic_write_bytes(out_dir / METRICS_FILE, lines.encode()),
        after=f"the checkpoint of epoch {len(history)} is saved: free space and continue with --resume",
    )


def _save_progress(out_dir: Path, checkpoint_path: Path, state: dict[str, Any]) -> None:
    """The checkpoint, then the metrics it includes; each replaces its previous version whole."""
    done = state["epoch"] - 1
    kept = (
        f"the checkpoint of epoch {done} is intact: free space and continue with --resume"
        if done > 0
        else "nothing was checkpointed yet: free space and run again (--resume starts it over)"
    )
    _writing("the checkpoint", checkpoint_path, lambda: _save_checkpoint(checkpoint_path, state), after=kept)
    _write_metrics(out_dir, state["history"])


#: One optimisation step's forward pass: (loss to backpropagate, mean loss, summed -ELBO, summed KL)
#: over the whole global batch ``x`` at this KL weight.
Step = Callable[[Tensor, float], tuple[Tensor, float, float, float]]


def _local_step(model: VAE, device: torch.device) -> Step:
    """The batch through the model in this process (the one-process run)."""

    def step(x: Tensor, kl_weight: float) -> tuple[Tensor, float, float, float]:
        out = model(x.to(device), kl_weight=kl_weight)
        return out["loss"], out["loss"].item(), float(out["neg_elbo"].sum()), float(out["kl"].sum())

    return step


def _sharded_step(model: VAE, context: Context) -> Step:
    """This process's shard of the batch through DistributedDataParallel; totals over all shards."""
    from torch.nn.parallel import DistributedDataParallel

    on_gpu = context.device.type == "cuda"
    objective = DistributedDataParallel(
        ShardObjective(model, context.world_size),
        device_ids=[context.device.index] if on_gpu else None,
        forward_sync_buffers=False,  # the only buffer is a fixed pixel scale, identical everywhere
    )

    def step(x: Tensor, kl_weight: float) -> tuple[Tensor, float, float, float]:
        start, stop = context.shard(len(x))
        loss, sums = objective(x[start:stop].to(context.device), start, len(x), kl_weight)
        loss_sum, neg_elbo, kl = context.sum(sums.tolist())
        return loss, loss_sum / len(x), neg_elbo, kl

    return step


def _train_epoch(
    model: VAE,
    optimizer: torch.optim.Optimizer,
    images: Images,
    config: TrainConfig,
    epoch: int,
    generator: torch.Generator,
    bar: _Progress,
    checkpoint_path: Path,
    step: Step,
) -> dict[str, float]:
    """One pass over the shuffled training images; returns summed loss, -ELBO and KL.

    Batches are drawn, cropped and augmented whole on every process (same generator, same draws),
    then ``step`` runs the forward pass: here, or on this process's shard.
    """
    started = time.perf_counter()
    sums = {"loss": 0.0, "neg_elbo": 0.0, "kl": 0.0}
    count = len(images)
    batches = math.ceil(count / config.batch_size)
    order = torch.randperm(count, generator=generator)
    for index in range(batches):
        x = to_float(images_at(images, order[index * config.batch_size : (index + 1) * config.batch_size]))
        if config.crop_size is not None:
            x = random_crop(x, config.crop_size, generator)
        if config.augment:
            x = augment_batch(x, generator)
        position = epoch + index / batches
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, position) * group["lr_factor"]
        loss, loss_value, neg_elbo, kl = step(x, kl_weight_at(config, position))
        if not math.isfinite(loss_value):
            kept = (
                f"the last good checkpoint (epoch {epoch}) is kept in {checkpoint_path}"
                if epoch > 0
                else "no checkpoint was written yet"
            )
            raise TrainingError(
                f"training diverged: the loss became {loss_value} at epoch {epoch + 1}, batch "
                f"{index + 1}/{batches}; lower --lr or check the data ({kept})"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums["loss"] += loss_value * len(x)
        sums["neg_elbo"] += neg_elbo
        sums["kl"] += kl
        done = index * config.batch_size + len(x)
        rate = done / max(time.perf_counter() - started, 1e-9)
        bar.update(f"epoch {epoch + 1}/{config.epochs}", len(x), rate, sums["neg_elbo"] / done)
    return sums


def train(
    config: TrainConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    command: Sequence[str] | None = None,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    device: str = "cpu",
) -> Path:
    """Train a VAE as ``config`` says and write the bundle into ``out_dir``; returns ``out_dir``.

    ``resume`` continues from ``out_dir/checkpoint/last.pt`` and ends with exactly the weights an
    uninterrupted run would have. ``stop_after_epochs`` ends this call early, after that many
    epochs in total, leaving only the checkpoint (time-sliced jobs; a later ``resume`` finishes).
    ``command`` is recorded in the card (the argv that started the run). ``device`` is ``cpu``,
    ``cuda`` or ``auto``. Started by torchrun, every process calls this and shares the work.
    """
    with distributed.session(device) as context:
        return _train(
            config,
            Path(out_dir),
            context,
            resume=resume,
            command=command,
            progress=progress,
            stop_after_epochs=stop_after_epochs,
        )


def _load_on_each_machine(config: TrainConfig, context: Context, progress: bool) -> TrainingData:
    """Every process loads the data; the first on each machine goes first, so it alone builds a
    folder cache and the others open the finished one."""
    if not context.is_local_main:
        context.barrier()
    data = load_training_data(config, lazy=True, progress=progress and context.is_local_main)
    if context.is_local_main:
        context.barrier()
    return data


def _train(
    config: TrainConfig,
    out_dir: Path,
    context: Context,
    *,
    resume: bool,
    command: Sequence[str] | None,
    progress: bool,
    stop_after_epochs: int | None,
) -> Path:
    def prepare() -> dict[str, Any] | None:
        resume_from = _prepare_folder(out_dir, resume)
        _check_free_space(out_dir, config.model)
        if resume_from is None:
            if resume:  # killed before its first checkpoint: the same run, from the start
                saved = from_dict(TrainConfig, json.loads((out_dir / TRAIN_CONFIG_FILE).read_text()))
                _check_resumable(saved, config, 0)
            return None
        state = load_checkpoint(resume_from)
        _check_resumable(from_dict(TrainConfig, state["config"]), config, state["epoch"])
        return state

    state = context.run_on_main(prepare)
    checkpoint_path = out_dir / CHECKPOINT_DIR / CHECKPOINT_FILE

    torch.manual_seed(config.seed)
    data = _load_on_each_machine(config, context, progress)
    n_train = len(data.train)
    if state is not None and state["n_train"] != n_train:
        raise TrainingError(
            f"the data changed since the checkpoint: {state['n_train']} training images then, {n_train} now"
        )
    model = build_model(config.model).to(context.device)
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    start_epoch, elapsed_s, train_s = 0, 0.0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _restore_rng(state["rng"], generator)
        history = list(state["history"])
        start_epoch, elapsed_s, train_s = state["epoch"], state["elapsed_s"], state["train_s"]

    context.run_on_main(lambda: _start_folder(out_dir, config, history))
    end_epoch = config.epochs if stop_after_epochs is None else min(config.epochs, stop_after_epochs)
    bar = _Progress(
        progress and context.is_main,
        total_images=n_train * end_epoch,
        done_images=n_train * start_epoch,
        config=config,
    )
    step = _sharded_step(model, context) if context.distributed else _local_step(model, context.device)
    model.train()
    try:
        for epoch in range(start_epoch, end_epoch):
            epoch_start = time.perf_counter()
            sums = _train_epoch(
                model, optimizer, data.train, config, epoch, generator, bar, checkpoint_path, step
            )
            epoch_train_s = time.perf_counter() - epoch_start
            val = context.run_on_main(lambda: validate(model, data.val))
            if not all(math.isfinite(val[key]) for key in ("neg_elbo", "recon", "kl")):
                raise TrainingError(
                    f"validation metrics are not finite after epoch {epoch + 1} ({val}); lower "
                    f"--lr or check the data"
                )
            train_s += epoch_train_s
            elapsed_s += time.perf_counter() - epoch_start
            row = {
                "epoch": epoch + 1,
                "train_loss": sums["loss"] / n_train,
                "train_neg_elbo": sums["neg_elbo"] / n_train,
                "train_kl": sums["kl"] / n_train,
                **{f"val_{key}": value for key, value in val.items()},
                "kl_weight": kl_weight_at(config, epoch + 1),
                "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": n_train / epoch_train_s,
                "elapsed_s": elapsed_s,
            }
            history.append(row)
            state_now = {
                "format": CHECKPOINT_FORMAT,
                "config": to_dict(config),
                "epoch": epoch + 1,
                "n_train": n_train,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": _rng_state(generator),
                "history": history,
                "elapsed_s": elapsed_s,
                "train_s": train_s,
            }
            context.run_on_main(lambda state=state_now: _save_progress(out_dir, checkpoint_path, state))
            bar.epoch_done(row, config.epochs)
    finally:
        bar.close()
    if len(history) < config.epochs:
        return out_dir

    def finish() -> None:
        try:
            write_bundle(
                model, config, out_dir, data, history, elapsed_s=elapsed_s, train_s=train_s, command=command
            )
        except OSError as error:
            raise TrainingError(
                f"cannot write the bundle into {out_dir} ({error.strerror or error}); the final "
                f"checkpoint is saved: free space and run again with --resume to write the bundle"
            ) from None

    # The other processes wait for rank 0's bundle, so all of them leave the job together.
    context.run_on_main(finish)
    return out_dir


# -- the bundle -------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    return {
        "latentz": latentz.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def write_bundle(
    model: VAE,
    config: TrainConfig,
    out_dir: Path,
    data: TrainingData,
    history: list[dict[str, Any]],
    *,
    elapsed_s: float,
    train_s: float,
    command: Sequence[str] | None,
) -> None:
    """Weights, configs and plots first, ``card.json`` last: a folder with a card is complete.

    Runs on the CPU whatever the model trained on: export and plots expect CPU tensors.
    """
    model.cpu().eval()
    weights = out_dir / bundle.WEIGHTS_FILE
    save_weights(model, weights)
    bundle.atomic_write_json(out_dir / bundle.CONFIG_FILE, to_dict(config.model))
    bundle.atomic_write_json(out_dir / TRAIN_CONFIG_FILE, to_dict(config))
    mean, logvar = posterior_means(model, data.train)
    stats = latent_stats(mean, logvar)
    finished = export.finish_bundle(
        model,
        out_dir,
        _numpy(data.train),
        _numpy(data.val),
        export.entropy_note(data.spec, len(data.train)),
        posterior_train=(mean.double().numpy(), (0.5 * logvar).exp().double().numpy()),
    )
    write_plots(model, data, history, out_dir / bundle.PLOTS_DIR, stats["kl"])
    final = history[-1]
    argv = list(command) if command else []
    card = {
        "name": out_dir.resolve().name,
        "data": data.spec,
        "split": data.source_note,
        "skipped_files": data.skipped,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "command": argv,
        "command_line": shlex.join(argv) if argv else "latentz.training.train() called from Python",
        "epochs": final["epoch"],
        "wall_time_s": round(elapsed_s, 2),
        "images_per_s": round(len(data.train) * final["epoch"] / max(train_s, 1e-9), 1),
        "metrics": {
            key.removeprefix("val_"): value for key, value in final.items() if key.startswith("val_")
        },
        "metrics_note": (
            "validation split; true ELBO (beta = 1) in nats per image; PSNR of the mean reconstruction"
        ),
        "fingerprint": bundle.sha256_file(weights),
        "latent_stats": stats,
        **finished,
        "parameters": count_parameters(model),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    bundle.atomic_write_json(out_dir / bundle.CARD_FILE, card)


def _pick_pair(labels: np.ndarray | None, count: int) -> tuple[int, int]:
    """Two validation images to interpolate between: different classes when labels are known."""
    if labels is not None and len(labels) == count:
        for index in range(1, count):
            if labels[index] != labels[0]:
                return 0, index
    return 0, min(1, count - 1)


@torch.no_grad()
def write_plots(
    model: VAE, data: TrainingData, history: list[dict[str, Any]], plots_dir: Path, kl_per_dim: list[float]
) -> None:
    """The five bundle figures: reconstructions, samples, traversal, interpolation, loss."""
    from latentz import plots

    model.eval()
    val = images_at(data.val, slice(0, 16))
    mean, _ = model.encode(to_float(val))
    plots.plot_reconstructions(
        val.numpy(), to_uint8(model.decode_mean(mean)), plots_dir / "reconstructions.png"
    )
    samples = model.sample(64, generator=torch.Generator().manual_seed(0))
    plots.plot_samples(
        to_uint8(samples), plots_dir / "samples.png", title="Samples: decoded draws from the prior N(0, I)"
    )
    order = sorted(range(len(kl_per_dim)), key=lambda d: -kl_per_dim[d])[:MAX_TRAVERSAL_DIMS]
    values = torch.tensor(TRAVERSAL_VALUES)
    base = mean[0]
    # A spatial latent's channel is a whole feature map: its traversal sets it everywhere at once.
    per_row = (-1, *[1] * (base.ndim - 1))
    rows = []
    for dim in order:
        z = base.unsqueeze(0).repeat(len(values), *[1] * base.ndim)
        z[:, dim] = values.view(per_row)
        rows.append(to_uint8(model.decode_mean(z)))
    unit = "channel" if model.config.fully_convolutional else "dimension"
    labels = [f"z{dim}  KL {kl_per_dim[dim]:.2f}" for dim in order]
    plots.plot_traversal(
        np.stack(rows),
        plots_dir / "traversal.png",
        list(TRAVERSAL_VALUES),
        labels,
        title=f"Latent traversals around a validation image (rows: most-used {unit}s)",
    )
    first, second = _pick_pair(data.val_labels, len(data.val))
    ends, _ = model.encode(to_float(images_at(data.val, [first, second])))
    weights = torch.linspace(0, 1, 10).view(-1, *[1] * (ends.ndim - 1))
    strip = model.decode_mean((1 - weights) * ends[0] + weights * ends[1])
    plots.plot_interpolation(to_uint8(strip), plots_dir / "interpolation.png")
    plots.plot_loss(history, plots_dir / "loss.png")


def default_command() -> list[str]:
    """The argv of this process as the user typed it, with the program shown as `latentz`."""
    return ["latentz", *sys.argv[1:]]
