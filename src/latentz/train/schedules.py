"""What changes with training progress: the KL weight, the learning rate, and the optimiser it drives.

Both schedules are pure functions of the fractional epoch, so there is no scheduler state that a
checkpoint could miss: a resumed run continues them exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from latentz.config import TrainConfig
from latentz.models import VAE

#: The cosine schedule ends at this fraction of the initial learning rate.
FINAL_LR_FRACTION = 0.1
#: How much faster than the network weights a learned pixel scale (gaussian-learned) adapts.
LOG_SCALE_LR_FACTOR = 10.0


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


def set_learning_rate(optimizer: torch.optim.Optimizer, config: TrainConfig, epoch_progress: float) -> None:
    """Every parameter group's step size at this point of the run (`lr_at` times its factor)."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(config, epoch_progress) * group["lr_factor"]
