"""`latentz train` for the rate-distortion photo codec, through the real CLI on a small folder of
real car photos: a tiny codec trains into a bundle, and ``--init-from`` warm-starts a second run
from it (crops larger than the photos included), carrying the first run's history into the card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from latentz.cli import app
from latentz.data.folders import list_image_files

CARS = Path(__file__).resolve().parents[2] / "shared" / "data" / "red-cars"
TINY = {
    "model": {
        "widths": [8, 8],
        "latent_channels": 8,
        "hyper_channels": 8,
        "hyper_latent_channels": 4,
        "lambdas": [0.01, 0.05],
    }
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cars")
    for path in list_image_files(CARS)[:12]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def first_run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = root / "first"
    args = ["train", "--data", f"folder:{photos}", "--config", str(config), "-o", str(out),
            "--epochs", "2", "--limit", "8", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_a_warm_start_continues_a_finished_bundle_and_its_card_tells_both_runs(
    first_run: Path, photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "second"
    config = first_run.parent / "tiny.json"
    args = ["train", "--data", f"folder:{photos}", "--config", str(config), "-o", str(out),
            "--init-from", str(first_run), "--epochs", "2", "--limit", "8", "--crop-size", "160",
            "--lr", "1e-4", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    first, second = (json.loads((p / "card.json").read_text()) for p in (first_run, out))
    record = second["initialised_from"]
    assert record["fingerprint"] == first["fingerprint"] != second["fingerprint"]
    assert record["commands"] == first["commands"] and record["epochs"] == 2
    assert first["initialised_from"] is None
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["init_from"] == str(first_run) and saved["crop_size"] == 160


def test_a_warm_start_from_other_sizes_or_for_a_vae_is_refused(
    first_run: Path, photos: Path, tmp_path: Path, mnist_path: Path
) -> None:
    bigger = tmp_path / "bigger.json"
    bigger.write_text(json.dumps({"model": {**TINY["model"], "latent_channels": 16}}))
    args = ["train", "--data", f"folder:{photos}", "--config", str(bigger), "-o", str(tmp_path / "a"),
            "--init-from", str(first_run), "--epochs", "2", "--limit", "8", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "the same sizes" in result.output
    assert not (tmp_path / "a" / "card.json").exists()
    args = ["train", "--data", f"idx:{mnist_path}", "-o", str(tmp_path / "b"), "--init-from", str(first_run),
            "--epochs", "1", "--limit", "64", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "photo codec" in result.output
    missing = ["train", "--data", f"folder:{photos}", "--config", str(first_run.parent / "tiny.json"),
               "-o", str(tmp_path / "c"), "--init-from", str(tmp_path / "nowhere"), "--epochs", "2",
               "--limit", "8", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, missing)
    assert result.exit_code == 2 and "not a finished codec bundle" in result.output
