"""What a run shows while it trains: one sentence on the figures, a progress bar, a line per epoch.

Only the main process shows anything; the figures are the true (beta = 1) negative ELBO per image,
in nats and in bits per dimension, the quantity `latentz eval` reports.
"""

from __future__ import annotations

from typing import Any

from latentz.config import TrainConfig
from latentz.evaluation import CONTINUOUS_LIKELIHOODS, bits_per_dim


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


class RunProgress:
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
