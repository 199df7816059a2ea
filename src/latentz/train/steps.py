"""One optimisation step's forward pass over a global batch: in this process, or on its shard.

Both return the same totals for the whole batch, so the loop neither knows nor cares how many
processes share the work (`latentz.distributed`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from latentz.distributed import Context, ShardObjective
from latentz.models import VAE

#: One optimisation step's forward pass: (loss to backpropagate, mean loss, summed -ELBO, summed KL)
#: over the whole global batch ``x`` at this KL weight.
Step = Callable[[Tensor, float], tuple[Tensor, float, float, float]]


def local_step(model: VAE, device: torch.device) -> Step:
    """The batch through the model in this process (the one-process run)."""

    def step(x: Tensor, kl_weight: float) -> tuple[Tensor, float, float, float]:
        out = model(x.to(device), kl_weight=kl_weight)
        return out["loss"], out["loss"].item(), float(out["neg_elbo"].sum()), float(out["kl"].sum())

    return step


def sharded_step(model: VAE, context: Context) -> Step:
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


def step_for(model: VAE, context: Context) -> Step:
    """The step this process takes: its shard when several processes share the job, else the batch."""
    return sharded_step(model, context) if context.distributed else local_step(model, context.device)
