"""Crash safety: SIGKILL a real `latentz train` again and again, resume, and get the uninterrupted run.

Also: a read-only output folder and a full disk stop a run with one clear line (exit code 2). The
disk-full case runs twice: for real on a tiny tmpfs (needs root to mount one; skipped otherwise)
and by injecting ENOSPC at the write call (always).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from latentz import bundle, files
from latentz.cli import app
from latentz.config import ModelConfig, TrainConfig, from_dict, to_dict
from latentz.models import load_model
from latentz.train import TrainingError, train
from latentz.train.run_folder import CHECKPOINT_DIR, CHECKPOINT_FILE, METRICS_FILE, TRAIN_CONFIG_FILE
from latentz.train.snapshot import load_checkpoint

#: A small model with a wide dense layer: 0.4M parameters make a ~5 MB checkpoint whose write
#: (and fsync) takes long enough to be interrupted on purpose.
EPOCHS = 5  # room for the three launches before the bundle kill: each saves one or two epochs
FLAGS = ["--limit", "128", "--epochs", str(EPOCHS), "--batch-size", "32", "--widths", "8,16", "--hidden",
         "256", "--latent-dim", "3", "--no-progress", "--device", "cpu"]  # fmt: skip
TIMING_KEYS = {"images_per_s", "elapsed_s"}
POLL_S = 0.0005


def start(out: Path, data: str | None, log: Path) -> subprocess.Popen[bytes]:
    """`latentz train` in a child process: the full command first, `--resume` once a run folder exists."""
    if (out / TRAIN_CONFIG_FILE).is_file():
        args = ["train", "-o", str(out), "--resume", "--no-progress", "--device", "cpu"]
    else:
        args = ["train", "--data", str(data), "-o", str(out), *FLAGS]
    with log.open("ab") as handle:
        return subprocess.Popen([sys.executable, "-m", "latentz", *args], stdout=handle, stderr=handle)


def wait_for(process: subprocess.Popen[bytes], condition: Callable[[], bool], timeout_s: float = 120) -> bool:
    """Poll until ``condition`` holds (True) or the process ends by itself (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(POLL_S)
    raise AssertionError("the training process neither finished nor reached the kill point")


def partial_checkpoints(out: Path) -> list[Path]:
    return list((out / CHECKPOINT_DIR).glob(f".{CHECKPOINT_FILE}.*.tmp"))


def checkpoint_epoch(out: Path) -> int:
    path = out / CHECKPOINT_DIR / CHECKPOINT_FILE
    return load_checkpoint(path)["epoch"] if path.is_file() else 0  # raises if it were corrupt


def metric_rows(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / METRICS_FILE).read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_run(
    tmp_path: Path, mnist_path: Path
) -> None:
    """Four kills: at a random moment inside an epoch, twice inside a checkpoint write (the temporary
    file is there, the rename has not happened), once while the bundle is written. Every launch
    before the last saves at least one epoch, so the run always gets to its bundle."""
    out, log = tmp_path / "run", tmp_path / "train.log"
    chance = random.Random(6)
    leftovers: set[str] = set()  # partial files of earlier kills (the next resume deletes them)
    launched_ns = 0
    writes_seen: set[str] = set()

    def this_launchs_partials() -> set[str]:
        return {path.name for path in partial_checkpoints(out)} - leftovers

    def second_checkpoint_write_begins() -> bool:
        """Each write has its own temporary name; the second one of a launch is where it dies."""
        writing = this_launchs_partials()
        writes_seen.update(writing)
        return bool(writing) and len(writes_seen) >= 2

    def changed_since_launch(path: Path) -> Callable[[], bool]:
        return lambda: path.is_file() and path.stat().st_mtime_ns > launched_ns

    def bundle_being_written() -> bool:
        return (out / bundle.WEIGHTS_FILE).is_file() and not (out / bundle.CARD_FILE).exists()

    def kill_mid_epoch(process: subprocess.Popen[bytes]) -> bool:
        """After this launch's first checkpoint, a random fraction of an epoch (as long as that one took)."""
        # Every launch rewrites the run's config just before its first epoch.
        if not wait_for(process, changed_since_launch(out / TRAIN_CONFIG_FILE)):
            return False
        began = time.monotonic()
        if not wait_for(process, changed_since_launch(out / CHECKPOINT_DIR / CHECKPOINT_FILE)):
            return False
        time.sleep(chance.uniform(0.1, 0.9) * (time.monotonic() - began))
        return True

    plan = ["mid-epoch", "checkpoint", "checkpoint", "bundle"]
    outcomes: list[str] = []
    for moment in plan:
        leftovers.update(path.name for path in partial_checkpoints(out))
        writes_seen.clear()
        before = checkpoint_epoch(out)
        launched_ns = time.time_ns()
        process = start(out, f"idx:{mnist_path}", log)
        if moment == "mid-epoch":
            reached = kill_mid_epoch(process)
        elif moment == "checkpoint":
            reached = wait_for(process, second_checkpoint_write_begins)
        else:
            reached = wait_for(process, bundle_being_written)
        if not reached or process.poll() is not None:
            process.wait()
            outcomes.append(f"{moment}: finished before the kill (exit {process.returncode})")
            continue
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
        partial = bool(this_launchs_partials())
        # Whatever the moment, the latest checkpoint is a whole one and never goes backwards.
        assert checkpoint_epoch(out) >= before
        assert not (out / bundle.CARD_FILE).exists()
        outcomes.append(f"{moment}: killed at epoch {checkpoint_epoch(out)}{' mid-write' if partial else ''}")

    print("kills:", outcomes)
    final = start(out, None, log)
    assert final.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert [line.split(" at epoch")[0] for line in outcomes] == [f"{moment}: killed" for moment in plan], (
        outcomes
    )
    assert all("mid-write" in line for line in outcomes if line.startswith("checkpoint")), outcomes

    card = bundle.read_card(out)
    assert card["fingerprint"] == bundle.sha256_file(out / bundle.WEIGHTS_FILE)
    assert card["epochs"] == EPOCHS and load_model(out).config.hidden == 256
    assert not partial_checkpoints(out) and not list(out.glob(".*.tmp"))  # resume tidied the kills' leftovers

    config = from_dict(TrainConfig, json.loads((out / TRAIN_CONFIG_FILE).read_text()))
    straight = train(config, tmp_path / "straight", progress=False)
    assert metric_rows(out) == metric_rows(straight)
    killed, uninterrupted = load_file(out / bundle.WEIGHTS_FILE), load_file(straight / bundle.WEIGHTS_FILE)
    assert all((killed[key] == uninterrupted[key]).all() for key in uninterrupted)


# -- read-only folders and full disks ----------------------------------------------------------------
def mount_tmpfs(target: Path, options: str) -> bool:
    """Mount a tmpfs at ``target`` (root only); False where this machine does not allow it."""
    if os.geteuid() != 0:
        return False
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True
    )
    return result.returncode == 0


@contextlib.contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """A folder nobody may write to: a read-only tmpfs for root (who ignores permissions), else mode 555."""
    if os.geteuid() == 0:
        if not mount_tmpfs(path, "ro,size=1m"):
            pytest.skip("running as root, and mounting a read-only tmpfs is not allowed here")
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True)
    else:
        path.mkdir()
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)


def assert_one_clear_line(result, *phrases: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in lines[0], result.output


def test_a_read_only_output_folder_fails_before_training(tmp_path: Path, mnist_path: Path) -> None:
    with read_only_folder(tmp_path / "locked") as locked:
        result = CliRunner().invoke(
            app, ["train", "--data", f"idx:{mnist_path}", "-o", str(locked / "run"), *FLAGS]
        )
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert_one_clear_line(result, f"cannot write to {locked}", reason, "choose an output folder")


def test_a_disk_that_fills_up_mid_run_stops_cleanly_and_resumes(tmp_path: Path, mnist_path: Path) -> None:
    """A real ENOSPC: a 40 MB tmpfs that another file fills once the first epoch is checkpointed."""
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "size=40m"):
        pytest.skip("needs root and permission to mount a tmpfs (the injected ENOSPC test still runs)")
    out, filler = disk / "run", disk / "filler"

    def fill_the_disk_after_epoch_one() -> None:
        deadline = time.monotonic() + 120
        while not (out / METRICS_FILE).is_file() and time.monotonic() < deadline:
            time.sleep(POLL_S)
        with filler.open("wb") as handle, contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * (1 << 20))

    flags = ["--limit", "256", "--epochs", "2", "--widths", "8,16", "--hidden", "32", "--latent-dim", "3",
             "--no-progress", "--device", "cpu"]  # fmt: skip
    try:
        filling = threading.Thread(target=fill_the_disk_after_epoch_one, daemon=True)
        filling.start()
        result = CliRunner().invoke(app, ["train", "--data", f"idx:{mnist_path}", "-o", str(out), *flags])
        filling.join(timeout=120)
        checkpoint = out / CHECKPOINT_DIR / CHECKPOINT_FILE
        expected = (
            f"cannot write the checkpoint {checkpoint} (No space left on device); the checkpoint of epoch 1 "
            f"is intact: free space and continue with --resume"
        )
        assert_one_clear_line(result, expected)
        assert checkpoint_epoch(out) == 1 and not partial_checkpoints(out)
        filler.unlink()
        resumed = CliRunner().invoke(app, ["train", "-o", str(out), "--resume", "--no-progress"])
        assert resumed.exit_code == 0, resumed.output
        card = bundle.read_card(out)
        assert card["epochs"] == 2 and card["fingerprint"] == bundle.sha256_file(out / bundle.WEIGHTS_FILE)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_no_space_for_a_checkpoint_is_reported_injected(
    tmp_path: Path, mnist_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC injected at the checkpoint's write call, so CI machines without mount rights test it too."""
    real_write = files.atomic_write_bytes
    writes = {"checkpoints": 0}

    def disk_full_on_second_checkpoint(path: str | Path, data: bytes) -> None:
        if Path(path).name == CHECKPOINT_FILE:
            writes["checkpoints"] += 1
            if writes["checkpoints"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(files, "atomic_write_bytes", disk_full_on_second_checkpoint)
    out = tmp_path / "run"
    flags = ["--limit", "64", "--epochs", "3", "--widths", "4,8", "--hidden", "16", "--latent-dim", "2",
             "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, ["train", "--data", f"idx:{mnist_path}", "-o", str(out), *flags])
    assert_one_clear_line(result, "cannot write the checkpoint", "No space left on device",
                          "the checkpoint of epoch 1 is intact", "--resume")  # fmt: skip
    assert load_checkpoint(out / CHECKPOINT_DIR / CHECKPOINT_FILE)["epoch"] == 1
    assert len(metric_rows(out)) == 1
    resumed = CliRunner().invoke(app, ["train", "-o", str(out), "--resume", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert bundle.read_card(out)["epochs"] == 3


def test_no_space_at_the_start_is_refused_before_training(
    tmp_path: Path, mnist_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from latentz.train import run_folder

    monkeypatch.setattr(run_folder, "FOLDER_SPACE_MARGIN_BYTES", 1 << 62)  # more than any disk has free
    result = CliRunner().invoke(
        app, ["train", "--data", f"idx:{mnist_path}", "-o", str(tmp_path / "run"), *FLAGS]
    )
    assert_one_clear_line(result, "not enough disk space in", "MB are free")
    assert not (tmp_path / "run" / CHECKPOINT_DIR).exists()


def test_resume_after_a_kill_before_the_first_checkpoint_starts_over(
    tmp_path: Path, mnist_path: Path
) -> None:
    """The state such a kill leaves (config written, a half-written first checkpoint) resumes from scratch."""
    model = ModelConfig(arch="conv", image_size=28, channels=1, latent_dim=2, widths=[4, 8], hidden=16)
    config = TrainConfig(data=f"idx:{mnist_path}", model=model, epochs=1, batch_size=32, max_train_images=64)
    out = tmp_path / "run"
    (out / CHECKPOINT_DIR).mkdir(parents=True)
    bundle.atomic_write_json(out / TRAIN_CONFIG_FILE, to_dict(config))
    leftover = out / CHECKPOINT_DIR / f".{CHECKPOINT_FILE}.abc123.tmp"
    leftover.write_bytes(b"half a checkpoint")
    half_plot = out / bundle.PLOTS_DIR / ".samples.xyz789.png"
    half_plot.parent.mkdir()
    half_plot.write_bytes(b"\x89PNG half a plot")
    train(config, out, resume=True, progress=False)
    assert bundle.read_card(out)["epochs"] == 1
    assert not leftover.exists() and not half_plot.exists()
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(config, tmp_path / "never-started", resume=True, progress=False)
