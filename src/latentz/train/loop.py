"""The training loop: open the run, load its images, then per epoch train, validate and snapshot.

`train` is the whole run from Python; `fit` is the loop inside an open `distributed.session`
(the CLI opens the session once, to agree on the configuration first). Under torchrun every
process runs the same loop: each computes its share of every global batch (`steps`) and only the
main one touches the run folder (`run_folder`), each such call wrapped in `Context.run_on_main` so
an error there stops every process with the same message.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from latentz import distributed
from latentz.config import TrainConfig
from latentz.data import Images, TrainingData, load_training_data
from latentz.distributed import Context
from latentz.models import build_model
from latentz.train import run_folder, snapshot
from latentz.train.batches import training_batch
from latentz.train.errors import TrainingError
from latentz.train.progress import RunProgress
from latentz.train.schedules import kl_weight_at, make_optimizer, set_learning_rate
from latentz.train.snapshot import RunState
from latentz.train.steps import Step, step_for
from latentz.train.validation import validate


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
        return fit(
            config,
            out_dir,
            context,
            resume=resume,
            command=command,
            progress=progress,
            stop_after_epochs=stop_after_epochs,
        )


def fit(
    config: TrainConfig,
    out_dir: Path,
    context: Context,
    *,
    resume: bool = False,
    command: Sequence[str] | None = None,
    progress: bool = True,
    stop_after_epochs: int | None = None,
) -> Path:
    """`train` in this process's place of an already open session (see `train` for the arguments)."""
    out_dir = Path(out_dir)
    checkpoint = context.run_on_main(lambda: run_folder.open_run(out_dir, config, resume))
    torch.manual_seed(config.seed)
    data = _load_on_each_machine(config, context, progress)
    run = _start(config, context, data, checkpoint)
    context.run_on_main(lambda: run_folder.start_folder(out_dir, config, run.history))
    end_epoch = config.epochs if stop_after_epochs is None else min(config.epochs, stop_after_epochs)
    n_train = len(data.train)
    bar = RunProgress(
        progress and context.is_main,
        total_images=n_train * end_epoch,
        done_images=n_train * run.epoch,
        config=config,
    )
    step = step_for(run.model, context)
    run.model.train()
    try:
        for epoch in range(run.epoch, end_epoch):
            _epoch(run, config, data, context, step, bar, out_dir, epoch)
    finally:
        bar.close()
    if len(run.history) >= config.epochs:
        # The other processes wait for rank 0's bundle, so all of them leave the job together.
        context.run_on_main(lambda: run_folder.finish_bundle(run, config, out_dir, data, command))
    return out_dir


def _load_on_each_machine(config: TrainConfig, context: Context, progress: bool) -> TrainingData:
    """Every process loads the data; the first on each machine goes first, so it alone builds a
    folder cache and the others open the finished one."""
    if not context.is_local_main:
        context.barrier()
    data = load_training_data(config, lazy=True, progress=progress and context.is_local_main)
    if context.is_local_main:
        context.barrier()
    for split, images in (("train", data.train), ("val", data.val)):
        if len(images) == 0:
            raise TrainingError(
                f"the {split} split of {config.data} is empty; use more images or another --val-fraction"
            )
    return data


def _start(
    config: TrainConfig, context: Context, data: TrainingData, checkpoint: dict[str, Any] | None
) -> RunState:
    """A fresh model, optimiser and generator from the seed, then the checkpoint's state if resuming."""
    if checkpoint is not None:
        snapshot.check_same_data(checkpoint, len(data.train))
    model = build_model(config.model).to(context.device)
    run = RunState(model, make_optimizer(model, config), torch.Generator().manual_seed(config.seed))
    if checkpoint is not None:
        snapshot.restore(checkpoint, run)
    return run


def _epoch(
    run: RunState,
    config: TrainConfig,
    data: TrainingData,
    context: Context,
    step: Step,
    bar: RunProgress,
    out_dir: Path,
    epoch: int,
) -> None:
    """Train one epoch, validate on the main process, record the metrics row and the snapshot."""
    epoch_start = time.perf_counter()
    sums = _train_epoch(run, data.train, config, epoch, bar, out_dir, step)
    epoch_train_s = time.perf_counter() - epoch_start
    val = context.run_on_main(lambda: validate(run.model, data.val))
    if not all(math.isfinite(val[key]) for key in ("neg_elbo", "recon", "kl")):
        raise TrainingError(
            f"validation metrics are not finite after epoch {epoch + 1} ({val}); lower --lr or check the data"
        )
    run.train_s += epoch_train_s
    run.elapsed_s += time.perf_counter() - epoch_start
    n_train = len(data.train)
    run.history.append(
        {
            "epoch": epoch + 1,
            "train_loss": sums["loss"] / n_train,
            "train_neg_elbo": sums["neg_elbo"] / n_train,
            "train_kl": sums["kl"] / n_train,
            **{f"val_{key}": value for key, value in val.items()},
            "kl_weight": kl_weight_at(config, epoch + 1),
            "lr": run.optimizer.param_groups[0]["lr"],
            "images_per_s": n_train / epoch_train_s,
            "elapsed_s": run.elapsed_s,
        }
    )
    run.epoch = epoch + 1
    state = snapshot.capture(run, config, n_train)
    context.run_on_main(lambda: run_folder.save_progress(out_dir, state))
    bar.epoch_done(run.history[-1], config.epochs)


def _train_epoch(
    run: RunState,
    images: Images,
    config: TrainConfig,
    epoch: int,
    bar: RunProgress,
    out_dir: Path,
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
    order = torch.randperm(count, generator=run.generator)
    for index in range(batches):
        batch_order = order[index * config.batch_size : (index + 1) * config.batch_size]
        x = training_batch(images, batch_order, config, run.generator)
        position = epoch + index / batches
        set_learning_rate(run.optimizer, config, position)
        loss, loss_value, neg_elbo, kl = step(x, kl_weight_at(config, position))
        if not math.isfinite(loss_value):
            _diverged(loss_value, epoch, index, batches, out_dir)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        sums["loss"] += loss_value * len(x)
        sums["neg_elbo"] += neg_elbo
        sums["kl"] += kl
        done = index * config.batch_size + len(x)
        rate = done / max(time.perf_counter() - started, 1e-9)
        bar.update(f"epoch {epoch + 1}/{config.epochs}", len(x), rate, sums["neg_elbo"] / done)
    return sums


def _diverged(loss_value: float, epoch: int, index: int, batches: int, out_dir: Path) -> None:
    kept = (
        f"the last good checkpoint (epoch {epoch}) is kept in {run_folder.checkpoint_path(out_dir)}"
        if epoch > 0
        else "no checkpoint was written yet"
    )
    raise TrainingError(
        f"training diverged: the loss became {loss_value} at epoch {epoch + 1}, batch "
        f"{index + 1}/{batches}; lower --lr or check the data ({kept})"
    )


def default_command() -> list[str]:
    """The argv of this process as the user typed it, with the program shown as `latentz`."""
    return ["latentz", *sys.argv[1:]]
