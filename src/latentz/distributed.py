"""Training on several processes (GPUs, or CPU slots) with PyTorch's own engine, launched by torchrun.

``torchrun --nproc-per-node N -m latentz train ...`` starts N copies of the command; torchrun tells
each its place through ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous through
``MASTER_ADDR``/``MASTER_PORT``). `session` turns that into a `Context`: the process group (NCCL
on GPUs, gloo on CPUs), this process's device, and the helpers the training loop needs.

The distributed run is built to be the one-process run of the same global batch, computed in
pieces: every process draws the same seeded shuffle, takes a contiguous share of each global
batch (`Context.shard`), and `ShardObjective` makes the averaged gradient equal the gradient of
the global batch's mean loss with the very noise a single process would have drawn. Only rank 0
touches the output folder (it reads the checkpoint on resume and broadcasts it, validates, writes
metrics, checkpoints and the bundle), so on several machines the output folder need only exist
on rank 0's.
"""

from __future__ import annotations

import gc
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from latentz.models import VAE
from latentz.objectives import elbo_terms

DEVICES = ("auto", "cpu", "cuda")
#: How long a process waits for the others at a collective before the job fails. Rank 0 alone
#: validates and writes checkpoints while the others wait, so this must cover those.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)

T = TypeVar("T")


class DistributedError(RuntimeError):
    """A launch that cannot work: CUDA asked for but absent, more processes than GPUs, ..."""


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (or anything else that sets the same variables)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` is the local GPU when CUDA is usable and the CPU otherwise; ``cuda`` insists on a GPU."""
    if name not in DEVICES:
        raise DistributedError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DistributedError("--device cuda was asked for but this torch build sees no CUDA GPU")
    if local_rank >= torch.cuda.device_count():
        raise DistributedError(
            f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
            f"start at most that many processes per node (--nproc-per-node)"
        )
    return torch.device("cuda", local_rank)


@dataclass(frozen=True)
class Context:
    """This process's place in the job; the defaults describe a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """The first process on its machine: it builds per-machine things like the folder cache."""
        return self.local_rank == 0

    def shard(self, count: int) -> tuple[int, int]:
        """This process's contiguous share ``[start, stop)`` of ``count`` items (sizes differ by <= 1)."""
        return count * self.rank // self.world_size, count * (self.rank + 1) // self.world_size

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def run_on_main(self, action: Callable[[], T]) -> T:
        """Run ``action`` on rank 0 only and give every process its result, or its exception.

        Anything that can fail on rank 0 alone (the output folder is full or read-only, the
        checkpoint is unreadable) then stops every process with the same error instead of
        leaving the others waiting at the next collective.
        """
        if not self.distributed:
            return action()
        outcome: list[object] = [None]
        failure: BaseException | None = None
        if self.is_main:
            try:
                outcome[0] = ("ok", action())
            except Exception as error:
                failure = error
                outcome[0] = ("error", _picklable(error))
        dist.broadcast_object_list(outcome, src=0, device=self.device)
        status, value = outcome[0]  # type: ignore[misc]
        if status == "error":
            raise failure if failure is not None else value  # type: ignore[misc]
        return value  # type: ignore[return-value]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over all processes (float64), identical on every process."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()


def _picklable(error: Exception) -> Exception:
    """The error itself when it survives pickling (to reach the other ranks), else its message."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{error.__class__.__name__}: {error}")
    return error


@contextmanager
def session(device: str = "cpu") -> Iterator[Context]:
    """This process's `Context`; under torchrun, joins (and afterwards leaves) the process group.

    A group somebody already initialised is used as it is and left for them to destroy. After a
    normal end every process meets the others once more before leaving, and objects still tied to
    the group (DistributedDataParallel's reducer) are collected before it goes: a worker once
    aborted at exit ("terminate called without an active exception", gloo, torch 2.13) when it
    left while rank 0 was still writing the bundle.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        yield Context(local_rank=local_rank, device=resolve_device(device, local_rank))
        return
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    chosen = resolve_device(device, local_rank)
    owns_group = not dist.is_initialized()
    if owns_group:
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    context = Context(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)
    try:
        yield context
        if owns_group:
            context.barrier()  # not after an error: the others may never get here
    finally:
        if owns_group and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()


class ShardObjective(nn.Module):
    """The one-process loss of a global batch, computed on this process's shard of it.

    DistributedDataParallel averages gradients over the processes, so each shard's loss is its
    sum over images times ``world_size / batch``: the average is then exactly the gradient of the
    global batch's mean loss, whatever the shard sizes (the last batch of an epoch rarely splits
    evenly). The reparameterisation noise of the whole batch is drawn on every process from the
    same seeded global RNG and sliced, so each image gets the noise a one-process run gives it and
    every process's RNG stays in step: a checkpoint of any rank resumes at any world size.
    The terms are `objectives.elbo_terms`, as in `VAE.forward`; the distributed test compares the two.
    """

    def __init__(self, vae: VAE, world_size: int) -> None:
        super().__init__()
        self.vae = vae
        self.world_size = world_size

    def forward(self, shard: Tensor, start: int, batch: int, kl_weight: float) -> tuple[Tensor, Tensor]:
        """Returns (loss to backpropagate, detached sums of loss, -ELBO and KL over the shard)."""

        def shard_noise(mean: Tensor) -> Tensor:
            """The whole batch's noise from the global RNG, sliced to this shard's images."""
            noise = torch.randn((batch, *mean.shape[1:]), dtype=mean.dtype)[start : start + len(shard)]
            return noise.to(mean.device)

        terms = elbo_terms(self.vae, shard, shard_noise)
        per_image = terms.loss(kl_weight)
        sums = torch.stack([per_image.sum(), terms.neg_elbo.sum(), terms.kl.sum()]).detach()
        return per_image.sum() * (self.world_size / batch), sums
