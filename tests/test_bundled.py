"""The bundled models are real `latentz train` outputs with honest cards, and they are good.

These check the shipped artefacts, not the code that made them: a retrained or hand-edited bundle
that lost its quality or its provenance fails here.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from latentz import bundle
from latentz.cli import app

SHIPPED = ("mnist-z10", "mnist-z32", "fashion-z10", "red-cars-64", "red-cars-128")
ORIGINAL_DEMO_NATS = 126.0  # the course demo's conv VAE on MNIST (10-d latent, KL weighted 1/128)


def shipped(name: str) -> Path:
    path = bundle.PACKAGED_BUNDLES / name
    assert bundle.is_bundle(path), f"{name} is missing from {bundle.PACKAGED_BUNDLES}"
    return path


@pytest.mark.parametrize("name", SHIPPED)
def test_each_card_says_how_the_bundle_was_made(name: str) -> None:
    path = shipped(name)
    card = bundle.read_card(path)
    assert (
        card["command"][:2] == ["latentz", "train"] and f"{path.parent.name}/{name}" in card["command_line"]
    )
    assert card["data"] and card["split"] and card["epochs"] >= 1 and card["wall_time_s"] > 0
    assert card["fingerprint"] == bundle.sha256_file(path / bundle.WEIGHTS_FILE)
    assert card["onnx"]["decoder_max_abs_diff"] < 1e-4 and card["onnx"]["encoder_mean_max_abs_diff"] < 1e-4
    assert card["entropy_model"]["id"] == json.loads((path / bundle.ENTROPY_MODEL_FILE).read_text())["id"]
    for plot in ("reconstructions", "samples", "traversal", "interpolation", "loss"):
        assert (path / bundle.PLOTS_DIR / f"{plot}.png").stat().st_size > 5_000
    assert not (path / "checkpoint").exists(), "shipped bundles carry no training checkpoint"


def test_models_lists_every_shipped_bundle() -> None:
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    for name in SHIPPED:
        assert rows[name]["exported"] is True
        card = bundle.read_card(shipped(name))
        assert rows[name]["fingerprint"] == card["fingerprint"]
        assert rows[name]["short_fingerprint"] == card["fingerprint"][:8]
        assert rows[name]["where"] == "packaged"


def test_mnist_z10_on_held_out_digits_beats_the_original_demo_by_far(mnist_path: Path) -> None:
    """The issue's own command, on the 900 digits the model never saw."""
    result = CliRunner().invoke(app, ["eval", "mnist-z10", "--data", f"idx:{mnist_path}", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n_images"] == 900 and "validation split" in report["split_note"]
    for key in ("neg_elbo_nats", "recon_nats", "kl_nats", "bits_per_dim", "psnr_db", "ssim", "active_units"):
        assert report[key] is not None, key
    assert report["neg_elbo_nats"] < ORIGINAL_DEMO_NATS - 20
    assert report["active_units"] == 10 and report["pixels"] == "grey-level"


def test_the_rate_distortion_photo_codec_card_is_honest() -> None:
    """red-cars-hp (format v2): made by `latentz train`'s photo recipe and then warm-started, run
    after run, from the bundle before (`--init-from`) at 128-pixel crops; every run's commands and
    fingerprint on the card down to the first (160 epochs), its tables' digest, its measured curve,
    its plots, no checkpoint."""
    path = shipped("red-cars-hp")
    card = bundle.read_card(path)
    assert card["command"][:2] == ["latentz", "train"] and "--arch" not in card["command"]
    first, *rest = card["commands"]
    assert (
        first[:2] == ["latentz", "train"]
        and "--init-from" in first
        and "folder:../shared/data/red-cars" in first
    )
    assert all(command[:2] == ["latentz", "train"] for command in rest)
    chain = [card]
    while chain[-1].get("initialised_from"):
        chain.append(chain[-1]["initialised_from"])
    assert len(chain) >= 2 and len({run["fingerprint"] for run in chain}) == len(chain)
    for source in chain[1:]:
        assert source["name"] == "red-cars-hp" and source["codec"] == card["codec"]
        assert all(command[:2] == ["latentz", "train"] for command in source["commands"])
    assert chain[-1]["epochs"] == 160
    assert card["fingerprint"] == bundle.sha256_file(path / bundle.WEIGHTS_FILE)
    tables = bundle.sha256_file(path / bundle.HYPERPRIOR_FILE)
    assert card["entropy_model"]["sha256"] == tables and card["entropy_model"]["id"] == int(tables[:2], 16)
    curve = card["rate_distortion"]
    assert [p["quality"] for p in curve] == list(range(0, 101, 10)) and card["n_val"] == 132
    assert all(a["bytes"] < b["bytes"] and a["psnr"] < b["psnr"] for a, b in itertools.pairwise(curve))
    for plot in ("training", "rd"):
        assert (path / bundle.PLOTS_DIR / f"{plot}.png").stat().st_size > 5_000
    assert not (path / "checkpoint").exists(), "shipped bundles carry no training checkpoint"
