"""Distributed training: two gloo processes under torchrun give the one-process run of the same global batch.

The runs are tiny (225 real digits, batches of 32) so the epoch ends with a one-image batch: one
process gets an empty shard, the case where averaging per-process mean losses would go wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentz import bundle
from latentz.config import ModelConfig, TrainConfig, from_dict
from latentz.distributed import Context, ShardObjective
from latentz.models import build_model
from latentz.train import train
from latentz.train.run_folder import METRICS_FILE, TRAIN_CONFIG_FILE

#: Largest allowed difference between a 2-process and a 1-process run. Only the order of float
#: additions differs (gradients summed over two shards instead of one batch): measured 4e-7
#: (weights) and 5e-6 (metrics).
WEIGHT_TOLERANCE = 1e-5
METRIC_RELATIVE_TOLERANCE = 1e-4
TIMING_KEYS = {"images_per_s", "elapsed_s"}
TRAIN_FLAGS = ["--limit", "225", "--epochs", "2", "--batch-size", "32", "--widths", "8,16", "--hidden",
               "32", "--latent-dim", "4", "--augment", "--kl-warmup", "1", "--no-progress", "--device",
               "cpu"]  # fmt: skip


def torchrun(nproc: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node N -m latentz ...`` (the module form of torchrun)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "latentz", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def metric_rows(folder: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (folder / METRICS_FILE).read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def largest_weight_difference(first: Path, second: Path) -> float:
    a, b = load_file(first / bundle.WEIGHTS_FILE), load_file(second / bundle.WEIGHTS_FILE)
    assert a.keys() == b.keys()
    return max(float((a[key] - b[key]).abs().max()) for key in a)


def assert_metrics_match(distributed_run: Path, single_run: Path) -> None:
    rows, reference = metric_rows(distributed_run), metric_rows(single_run)
    assert [row["epoch"] for row in rows] == [row["epoch"] for row in reference]
    for row, expected in zip(rows, reference, strict=True):
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, rel=METRIC_RELATIVE_TOLERANCE), key


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory, mnist_path: Path) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "two"
    result = torchrun(2, ["train", "--data", f"idx:{mnist_path}", "-o", str(out), *TRAIN_FLAGS], out.parent)
    assert result.returncode == 0, result.stderr[-8000:]
    # Only rank 0 talks: one summary line, not two.
    assert result.stdout.count("Wrote the bundle") == 1, result.stdout
    return out


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory: pytest.TempPathFactory, two_process_run: Path) -> Path:
    """The same configuration (read back from the 2-process run) trained in one process."""
    config = from_dict(TrainConfig, json.loads((two_process_run / TRAIN_CONFIG_FILE).read_text()))
    return train(config, tmp_path_factory.mktemp("single") / "one", progress=False)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(two_process_run: Path, one_process_run: Path) -> None:
    config = from_dict(TrainConfig, json.loads((two_process_run / TRAIN_CONFIG_FILE).read_text()))
    assert config.max_train_images == 225 and config.batch_size == 32  # 7 full batches and one of 1
    difference = largest_weight_difference(two_process_run, one_process_run)
    assert difference < WEIGHT_TOLERANCE
    assert_metrics_match(two_process_run, one_process_run)
    # Training moved the weights far more than the tolerance, so agreement is not an accident.
    initial = {k: v for k, v in build_model(config.model).state_dict().items()}
    trained = load_file(one_process_run / bundle.WEIGHTS_FILE)
    assert max(float((trained[k] - initial[k]).abs().max()) for k in initial) > 100 * WEIGHT_TOLERANCE
    card = bundle.read_card(two_process_run)
    assert card["fingerprint"] == bundle.sha256_file(two_process_run / bundle.WEIGHTS_FILE)
    assert card["n_train"] == 225 and card["epochs"] == 2
    assert card["command"][:2] == ["latentz", "train"]


@pytest.mark.slow
def test_two_processes_resume_a_one_process_checkpoint(
    tmp_path: Path, two_process_run: Path, one_process_run: Path
) -> None:
    """Rank 0 reads the checkpoint and broadcasts it; every process's RNG continues in step."""
    config = from_dict(TrainConfig, json.loads((two_process_run / TRAIN_CONFIG_FILE).read_text()))
    out = train(config, tmp_path / "halfway", progress=False, stop_after_epochs=1)
    assert not (out / bundle.CARD_FILE).exists()
    result = torchrun(2, ["train", "-o", str(out), "--resume", "--no-progress", "--device", "cpu"], tmp_path)
    assert result.returncode == 0, result.stderr[-8000:]
    assert largest_weight_difference(out, one_process_run) < WEIGHT_TOLERANCE
    assert_metrics_match(out, one_process_run)


def test_errors_reach_every_process_and_print_once(tmp_path: Path, mnist_path: Path) -> None:
    """A folder that already holds a run is refused on rank 0; rank 1 stops too, nothing hangs."""
    occupied = tmp_path / "occupied"
    (occupied / "checkpoint").mkdir(parents=True)
    (occupied / "checkpoint" / "last.pt").write_bytes(b"x")
    result = torchrun(
        2, ["train", "--data", f"idx:{mnist_path}", "-o", str(occupied), *TRAIN_FLAGS], tmp_path
    )
    assert result.returncode != 0
    assert result.stderr.count("already holds a training run") == 1, result.stderr[-8000:]


def test_shards_add_up_to_the_one_process_loss_and_gradient() -> None:
    """ShardObjective mirrors VAE.forward: same loss, and shard gradients average to the batch's."""
    model = build_model(ModelConfig(arch="conv", image_size=16, channels=1, latent_dim=3, widths=[4, 8],
                                    hidden=16, likelihood="gaussian-learned"))  # fmt: skip
    x = torch.rand(7, 1, 16, 16, generator=torch.Generator().manual_seed(0))

    def gradients() -> list[torch.Tensor]:
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return grads

    torch.manual_seed(3)
    reference = model(x, kl_weight=0.5)["loss"]
    reference.backward()
    expected = gradients()

    world = 2
    total = torch.zeros(())
    summed = [torch.zeros_like(p) for p in model.parameters()]
    for rank in range(world):
        torch.manual_seed(3)  # every process's global RNG is in the same state
        start, stop = Context(rank=rank, world_size=world).shard(len(x))
        loss, sums = ShardObjective(model, world)(x[start:stop], start, len(x), 0.5)
        loss.backward()
        total += sums[0]
        summed = [s + g for s, g in zip(summed, gradients(), strict=True)]
    assert float(total) / len(x) == pytest.approx(float(reference.detach()), rel=1e-6)
    for got, want in zip(summed, expected, strict=True):
        torch.testing.assert_close(got / world, want, rtol=1e-4, atol=1e-6)


def test_an_empty_shard_still_takes_part() -> None:
    """A one-image batch over two processes leaves one with nothing; its loss is 0 with zero gradients."""
    model = build_model(ModelConfig(arch="conv", image_size=16, channels=1, latent_dim=3, widths=[4, 8],
                                    hidden=16))  # fmt: skip
    loss, sums = ShardObjective(model, 2)(torch.rand(0, 1, 16, 16), 0, 1, 1.0)
    loss.backward()
    assert float(loss.detach()) == 0.0 and sums.tolist() == [0.0, 0.0, 0.0]
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    assert Context(rank=0, world_size=2).shard(1) == (0, 0)
    assert Context(rank=1, world_size=2).shard(1) == (0, 1)
    assert [Context(rank=r, world_size=3).shard(10) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
