"""The training loop on real MNIST digits: it learns, resumes exactly, stops on NaN, writes bundles."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from latentz import bundle
from latentz.cli import app
from latentz.config import ConfigError, ModelConfig, TrainConfig, replace
from latentz.data import load_dataset
from latentz.models import build_model, load_model
from latentz.recipes import build_config, default_train_config, recipe_for
from latentz.train import TrainingError, train
from latentz.train.batches import augment_batch
from latentz.train.run_folder import CHECKPOINT_DIR, CHECKPOINT_FILE, METRICS_FILE
from latentz.train.schedules import kl_weight_at, lr_at
from latentz.train.snapshot import load_checkpoint
from latentz.train.validation import VAL_NOISE_SEED

TINY = ModelConfig(arch="conv", image_size=28, channels=1, latent_dim=4, widths=[8, 16], hidden=32)
TIMING_KEYS = {"images_per_s", "elapsed_s"}
MakeConfig = Callable[..., TrainConfig]


@pytest.fixture(scope="module")
def mnist_spec(mnist_path: Path) -> str:
    """The real MNIST digits (conftest skips when they are absent)."""
    return f"idx:{mnist_path}"


@pytest.fixture()
def tiny_config(mnist_spec: str) -> MakeConfig:
    """A factory of small, fast runs: a tiny conv VAE on 256 real digits."""

    def make(**changes: object) -> TrainConfig:
        base = TrainConfig(data=mnist_spec, model=TINY, epochs=3, batch_size=32, max_train_images=256)
        return replace(base, **changes)

    return make


def metrics_without_timing(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / METRICS_FILE).read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def assert_same_weights(first: Path, second: Path) -> None:
    a, b = load_file(first / bundle.WEIGHTS_FILE), load_file(second / bundle.WEIGHTS_FILE)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- a real run -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mnist_spec: str) -> Path:
    out = tmp_path_factory.mktemp("runs") / "mnist-tiny"
    model = replace(TINY, latent_dim=8)
    config = TrainConfig(data=mnist_spec, model=model, epochs=3, batch_size=32, max_train_images=1000)
    return train(config, out, command=["latentz", "train", "--data", "mnist"], progress=False)


@pytest.mark.slow
def test_a_short_run_lowers_the_validation_loss(trained: Path) -> None:
    rows = [json.loads(line) for line in (trained / METRICS_FILE).read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[-1]["val_neg_elbo"] < rows[0]["val_neg_elbo"] - 10
    assert rows[-1]["val_psnr"] > rows[0]["val_psnr"]
    for row in rows:
        assert row["val_neg_elbo"] == pytest.approx(row["val_recon"] + row["val_kl"])
        assert row["images_per_s"] > 0 and row["kl_weight"] == 1.0


@pytest.mark.slow
def test_the_run_folder_is_a_complete_bundle(trained: Path) -> None:
    for name in (
        bundle.CONFIG_FILE,
        bundle.WEIGHTS_FILE,
        bundle.CARD_FILE,
        "train_config.json",
        METRICS_FILE,
    ):
        assert (trained / name).is_file(), name
    for plot in ("reconstructions", "samples", "traversal", "interpolation", "loss"):
        png = trained / bundle.PLOTS_DIR / f"{plot}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot

    card = bundle.read_card(trained)
    assert card["fingerprint"] == bundle.sha256_file(trained / bundle.WEIGHTS_FILE)
    assert card["name"] == "mnist-tiny" and card["epochs"] == 3
    assert card["command"] == ["latentz", "train", "--data", "mnist"]
    assert card["command_line"] == "latentz train --data mnist"
    assert card["n_train"] == 1000 and card["n_val"] == 112  # validation capped in proportion
    assert "held-out" in card["split"]
    assert card["metrics"]["neg_elbo"] > 0 and card["metrics"]["psnr"] > 0
    stats = card["latent_stats"]
    for key in ("mean", "std", "p1", "p99", "kl"):
        assert len(stats[key]) == 8, key
    assert all(lo <= hi for lo, hi in zip(stats["p1"], stats["p99"], strict=True))
    assert {"latentz", "torch", "python"} <= set(card["versions"])

    model = load_model(trained)
    assert model.config == ModelConfig(**json.loads((trained / bundle.CONFIG_FILE).read_text()))
    assert card["parameters"] == sum(p.numel() for p in model.parameters())


# -- what a run shows ------------------------------------------------------------------------------
def _neg_elbo_by_hand(model: torch.nn.Module, images: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """-ELBO per image of a gaussian-learned VAE, the density and the KL written out in numpy:
    0.5 ((x - mu) / s)^2 + log s + 0.5 log 2 pi per pixel, 0.5 (m^2 + v - 1 - log v) per latent."""
    x = images.transpose(0, 3, 1, 2).astype(np.float64) / 255.0
    with torch.no_grad():
        mean, logvar = (t.double().numpy() for t in model.encode(torch.from_numpy(x).float()))
        z = mean + noise * np.exp(0.5 * logvar)
        out = model.decode(torch.from_numpy(z).float()).double().numpy()
        scale = np.exp(model.log_scale.double().numpy()).reshape(1, -1, 1, 1)
    per_pixel = 0.5 * ((x - out) / scale) ** 2 + np.log(scale) + 0.5 * math.log(2 * math.pi)
    kl = 0.5 * (mean**2 + np.exp(logvar) - 1.0 - logvar)
    return per_pixel.reshape(len(x), -1).sum(1) + kl.reshape(len(x), -1).sum(1)


def _bits_per_dim_by_hand(nats: float, dims: int) -> float:
    """A density on [0, 1] times the 1/256 bin of an 8-bit level, in bits per dimension."""
    return (nats + dims * math.log(256)) / (dims * math.log(2))


def _number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.mark.slow
def test_the_bar_and_epoch_lines_show_the_elbo_an_independent_computation_gives(
    tmp_path: Path, mnist_spec: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A few steps on 32 real digits: the bar, the train and the val figures are one quantity (the
    true -ELBO per image, beta = 1, in nats and in bits/dim), not the beta-weighted loss, and they
    equal that quantity computed here from the weights, the seeds and the formulas. (The bar used
    to show the weighted loss of one batch, the epoch line -ELBO without saying per what.)"""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich draws its bar as on a terminal
    monkeypatch.setenv("COLUMNS", "250")
    model_config = replace(TINY, likelihood="gaussian-learned")
    config = TrainConfig(
        data=mnist_spec, model=model_config, epochs=2, batch_size=32, max_train_images=32, beta=2.0, seed=5
    )
    out = train(config, tmp_path / "run", progress=True)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().err)
    dims = model_config.num_pixels

    epochs = re.findall(
        r"epoch (\d)/2  -ELBO per image: train (-?[\d,.]+) nats = ([\d.]+) bits/dim, "
        r"val (-?[\d,.]+) nats = ([\d.]+) bits/dim",
        shown,
    )
    assert [row[0] for row in epochs] == ["1", "2"], shown
    (_, train_1, train_bits_1, _, _), (_, train_2, _, val_2, val_bits_2) = epochs
    bar = re.findall(r"-ELBO (-?[\d,.]+) nats/image = ([\d.]+) bits/dim", shown)
    assert bar, shown
    rows = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]

    # Epoch 1 is one batch of all 32 training digits at the initial weights: replay its seeded draws.
    torch.manual_seed(config.seed)
    initial = build_model(model_config).train()
    order = torch.randperm(32, generator=torch.Generator().manual_seed(config.seed)).numpy()
    digits = load_dataset(mnist_spec, split="train", limit=32).images[order]
    noise = torch.randn(32, model_config.latent_dim).double().numpy()
    expected_train_1 = float(_neg_elbo_by_hand(initial, digits, noise).mean())
    assert _number(train_1) == pytest.approx(expected_train_1, abs=0.02)
    assert float(train_bits_1) == pytest.approx(_bits_per_dim_by_hand(expected_train_1, dims), abs=2e-4)

    # The last validation: the bundle's weights on the 4 held-out digits, with validation's fixed noise.
    final = load_model(out).eval()
    held_out = load_dataset(mnist_spec, split="val", limit=4).images
    val_noise = torch.randn(
        (4, model_config.latent_dim), generator=torch.Generator().manual_seed(VAL_NOISE_SEED)
    )
    expected_val = float(_neg_elbo_by_hand(final, held_out, val_noise.double().numpy()).mean())
    assert _number(val_2) == pytest.approx(expected_val, abs=0.02)
    assert float(val_bits_2) == pytest.approx(_bits_per_dim_by_hand(expected_val, dims), abs=2e-4)

    # The bar ends on the epoch's train figure (the mean -ELBO, not the beta-weighted loss), sign included.
    assert _number(bar[-1][0]) == pytest.approx(_number(train_2), abs=0.06)
    assert _number(bar[-1][0]) == pytest.approx(rows[-1]["train_neg_elbo"], abs=0.06)
    assert "density on [0, 1]" in shown and "bits/dim" in shown


# -- resume -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_gives_exactly_the_uninterrupted_run(tmp_path: Path, tiny_config: MakeConfig) -> None:
    """Shuffling, augmentation, noise, KL warm-up and the cosine schedule all continue seamlessly."""
    config = tiny_config(augment=True, kl_warmup_epochs=2, lr_schedule="cosine")
    straight = train(config, tmp_path / "straight", progress=False)
    interrupted = train(config, tmp_path / "resumed", progress=False, stop_after_epochs=2)
    assert not (interrupted / bundle.CARD_FILE).exists()
    assert load_checkpoint(interrupted / CHECKPOINT_DIR / CHECKPOINT_FILE)["epoch"] == 2
    resumed = train(config, interrupted, progress=False, resume=True)
    assert_same_weights(straight, resumed)
    assert metrics_without_timing(straight) == metrics_without_timing(resumed)


@pytest.mark.slow
def test_a_finished_constant_lr_run_can_be_extended(tmp_path: Path, tiny_config: MakeConfig) -> None:
    config = tiny_config(lr_schedule="constant")
    straight = train(config, tmp_path / "straight", progress=False)
    shorter = train(replace(config, epochs=2), tmp_path / "extended", progress=False)
    assert bundle.read_card(shorter)["epochs"] == 2
    extended = train(config, shorter, progress=False, resume=True)
    assert bundle.read_card(extended)["epochs"] == 3
    assert_same_weights(straight, extended)


@pytest.mark.slow
def test_resume_refuses_a_different_config(tmp_path: Path, tiny_config: MakeConfig) -> None:
    config = tiny_config(epochs=2)
    out = train(config, tmp_path / "run", progress=False, stop_after_epochs=1)
    with pytest.raises(ConfigError, match=r"lr: 0\.001 -> 0\.01"):
        train(replace(config, lr=0.01), out, progress=False, resume=True)
    with pytest.raises(ConfigError, match="cosine"):
        train(replace(config, epochs=5), out, progress=False, resume=True)
    with pytest.raises(TrainingError, match="--resume"):
        train(config, out, progress=False)  # an occupied folder is never overwritten silently


def test_resume_needs_a_checkpoint(tmp_path: Path, tiny_config: MakeConfig) -> None:
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(tiny_config(), tmp_path / "empty", progress=False, resume=True)
    bad = tmp_path / "bad" / CHECKPOINT_DIR / CHECKPOINT_FILE
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="cannot read checkpoint"):
        train(tiny_config(), tmp_path / "bad", progress=False, resume=True)


# -- divergence ---------------------------------------------------------------------------------
def test_a_diverging_run_stops_with_a_clear_message(tmp_path: Path, tiny_config: MakeConfig) -> None:
    out = tmp_path / "diverged"
    with pytest.raises(TrainingError, match=r"epoch 1, batch \d+/\d+; lower --lr or check the data"):
        train(tiny_config(lr=1e6), out, progress=False)
    assert not (out / bundle.CARD_FILE).exists()
    assert not (out / bundle.WEIGHTS_FILE).exists()


@pytest.mark.slow
def test_nan_keeps_the_last_good_checkpoint(tmp_path: Path, tiny_config: MakeConfig) -> None:
    """Weights that went bad after epoch 1 (here: poisoned on disk) stop epoch 2 without a new save."""
    config = tiny_config(epochs=3)
    out = train(config, tmp_path / "run", progress=False, stop_after_epochs=1)
    path = out / CHECKPOINT_DIR / CHECKPOINT_FILE
    state = load_checkpoint(path)
    state["model"]["encoder.features.0.weight"].fill_(float("nan"))
    torch.save(state, path)
    poisoned = path.read_bytes()
    with pytest.raises(TrainingError, match=r"epoch 2, batch 1/.*last good checkpoint \(epoch 1\)"):
        train(config, out, progress=False, resume=True)
    assert path.read_bytes() == poisoned
    assert len((out / METRICS_FILE).read_text().splitlines()) == 1


@pytest.mark.slow
def test_photos_train_with_augmentation_and_a_learned_scale(tmp_path: Path, photo_dir: Path) -> None:
    model = ModelConfig(arch="conv", image_size=16, channels=3, latent_dim=3, widths=[4, 8], hidden=16,
                        likelihood="gaussian-learned")  # fmt: skip
    config = TrainConfig(data=f"folder:{photo_dir}", model=model, epochs=2, batch_size=2, augment=True,
                         val_fraction=0.2)  # fmt: skip
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        out = train(config, tmp_path / "photos", progress=False)
    card = bundle.read_card(out)
    assert card["skipped_files"] == 1 and "unreadable" in card["split"]
    assert card["n_train"] + card["n_val"] == 5
    assert load_file(out / bundle.WEIGHTS_FILE)["log_scale"].shape == (3,)
    assert (out / bundle.PLOTS_DIR / "traversal.png").is_file()


# -- pieces -------------------------------------------------------------------------------------
def test_kl_warmup_and_learning_rate_schedules() -> None:
    config = TrainConfig(beta=2.0, kl_warmup_epochs=4, epochs=10, lr=1e-3)
    assert [kl_weight_at(config, e) for e in (0, 1, 2, 4, 9)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert kl_weight_at(replace(config, kl_warmup_epochs=0), 0) == 2.0
    assert lr_at(config, 0) == pytest.approx(1e-3)
    assert lr_at(config, 5) == pytest.approx(0.55e-3)
    assert lr_at(config, 10) == pytest.approx(1e-4)
    assert lr_at(replace(config, lr_schedule="constant"), 7) == 1e-3


def test_augmentation_is_seeded_small_and_in_range() -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    first = augment_batch(x.clone(), torch.Generator().manual_seed(5))
    again = augment_batch(x.clone(), torch.Generator().manual_seed(5))
    other = augment_batch(x.clone(), torch.Generator().manual_seed(6))
    assert first.shape == x.shape
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert float(first.min()) >= 0 and float(first.max()) <= 1
    # Small changes: a shifted, jittered copy of the same picture, not noise.
    smooth = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(4, 3, 32, 32).contiguous()
    moved = augment_batch(smooth, torch.Generator().manual_seed(1))
    assert float((moved - smooth).abs().mean()) < 0.6
    grey = augment_batch(torch.full((4, 1, 16, 16), 0.5), torch.Generator().manual_seed(2))
    assert grey.shape == (4, 1, 16, 16)


# -- the command line -----------------------------------------------------------------------------
def test_config_layers_defaults_file_and_flags(tmp_path: Path) -> None:
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps({"epochs": 7, "lr": 0.002, "model": {"latent_dim": 6}}))
    config = build_config("mnist", config_file, {"epochs": 2}, {"widths": [16, 32]})
    assert (config.epochs, config.lr) == (2, 0.002)
    assert config.model.latent_dim == 6 and config.model.widths == [16, 32]
    assert config.model.likelihood == "bernoulli" and config.model.image_size == 28
    photos = build_config(f"folder:{tmp_path}", None, {}, {})
    assert photos.model.channels == 3 and photos.model.likelihood == "gaussian-learned"
    assert photos.model.image_size == 64
    assert photos.augment and not config.augment


def test_recipes_are_library_data_the_command_line_only_layers(tmp_path: Path) -> None:
    """What `latentz train --data SPEC` starts from is a TrainConfig a Python caller can build."""
    grey = default_train_config("mnist")
    assert grey == build_config("mnist", None, {}, {})
    assert (grey.epochs, grey.batch_size, grey.model.arch, grey.model.likelihood) == (
        30,
        128,
        "conv",
        "bernoulli",
    )
    photos = default_train_config(f"folder:{tmp_path}", epochs=3, model={"latent_dim": 8})
    assert photos == build_config(f"folder:{tmp_path}", None, {"epochs": 3}, {"latent_dim": 8})
    assert (photos.model.arch, photos.model.latent_dim, photos.beta, photos.augment) == (
        "spatial",
        8,
        2.0,
        True,
    )
    assert photos.epochs == 3 and photos.model.image_size == 64
    changed = recipe_for("mnist")
    changed["model"]["latent_dim"] = 99  # a copy: the recipe itself stays as it was
    assert default_train_config("mnist").model.latent_dim == 10


def test_config_file_with_wrong_types_is_a_config_error(tmp_path: Path) -> None:
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps({"model": {"widths": "abc"}}))
    with pytest.raises(ConfigError, match="invalid configuration"):
        build_config("mnist", config_file, {}, {})
    config_file.write_text(json.dumps({"epochs": "many"}))
    with pytest.raises(ConfigError, match="invalid configuration"):
        build_config("mnist", config_file, {}, {})
    config_file.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        build_config("mnist", config_file, {}, {})


@pytest.mark.slow
def test_cli_resume_needs_only_the_folder(tmp_path: Path, tiny_config: MakeConfig) -> None:
    out = train(tiny_config(epochs=2), tmp_path / "run", progress=False, stop_after_epochs=1)
    result = CliRunner().invoke(app, ["train", "-o", str(out), "--resume", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert bundle.read_card(out)["epochs"] == 2
    changed = CliRunner().invoke(app, ["train", "-o", str(out), "--resume", "--seed", "9"])
    assert changed.exit_code == 2 and "seed: 0 -> 9" in changed.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--image-size", "30"], "divisible by 4"),
        (["--likelihood", "poisson"], "likelihood"),
        (["--widths", "8,x"], "comma-separated"),
        (["--lr", "-1"], "lr must be"),
        (["--config", "/nonexistent/cfg.json"], "does not exist"),
        (["--resume"], "nothing to resume"),
    ],
)
def test_cli_errors_are_one_clear_line(tmp_path: Path, arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["train", "--data", "mnist", "-o", str(tmp_path / "m"), *arguments])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_reports_missing_data(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", "--data", "idx:/nonexistent/images.gz", "-o", str(tmp_path / "m")]
    )
    assert result.exit_code == 2
    assert "nonexistent" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_cli_trains_a_bundle_end_to_end(tmp_path: Path, mnist_spec: str) -> None:
    out = tmp_path / "cli-model"
    args = ["train", "--data", mnist_spec, "-o", str(out), "--limit", "256", "--epochs", "1",
            "--widths", "8,16", "--hidden", "32", "--latent-dim", "3", "--no-progress"]  # fmt: skip
    env = {**os.environ, "LATENTZ_MODELS": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "latentz", *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Wrote the bundle {out}: on its ")
    card = bundle.read_card(out)
    assert card["command"] == ["latentz", *args]
    assert json.loads((out / bundle.CONFIG_FILE).read_text())["latent_dim"] == 3
    listed = subprocess.run([sys.executable, "-m", "latentz", "models", "--json"], capture_output=True,
                            text=True, env=env, check=True)  # fmt: skip
    assert "cli-model" in [row["name"] for row in json.loads(listed.stdout)]
