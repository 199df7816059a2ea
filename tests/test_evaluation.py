"""evaluation: ELBO/IWAE bounds, bits/dim, PSNR/SSIM, active units, and `latentz eval`."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REAL_MNIST, make_digits
from typer.testing import CliRunner

from latentz import bundle, evaluation
from latentz.cli import app
from latentz.config import ModelConfig, save_json
from latentz.data import DatasetError, load_dataset, resolve_named, write_idx
from latentz.evaluation import evaluate
from latentz.models import VAE, save_weights

EXPECTED_KEYS = {
    "neg_elbo_nats",
    "recon_nats",
    "kl_nats",
    "bits_per_dim",
    "psnr_db",
    "ssim",
    "active_units",
    "n_images",
    "pixels",
}


def tiny_vae(seed: int = 0, **changes: object) -> VAE:
    torch.manual_seed(seed)
    options: dict = {"widths": [4, 8], "hidden": 16, "latent_dim": 4, **changes}
    return VAE(ModelConfig(**options)).eval()


def write_bundle(folder: Path, vae: VAE, data_spec: str) -> Path:
    """A minimal bundle, as `latentz train` would leave it (config, weights, card with fingerprint)."""
    folder.mkdir(parents=True)
    save_json(vae.config, folder / bundle.CONFIG_FILE)
    save_weights(vae, folder / bundle.WEIGHTS_FILE)
    card = {
        "name": folder.name,
        "data": data_spec,
        "fingerprint": bundle.sha256_file(folder / bundle.WEIGHTS_FILE),
    }
    bundle.atomic_write_json(folder / bundle.CARD_FILE, card)
    return folder


@pytest.fixture(scope="module")
def digits(idx_path: Path) -> np.ndarray:
    return load_dataset(f"idx:{idx_path}", split="all").images[:24]


@pytest.fixture()
def tiny_bundle(tmp_path: Path, idx_path: Path) -> Path:
    return write_bundle(tmp_path / "tiny", tiny_vae(), f"idx:{idx_path}")


def test_keys_and_value_ranges(digits: np.ndarray) -> None:
    vae = tiny_vae()
    results = evaluate(vae, digits)
    assert set(results) >= EXPECTED_KEYS and "iwae_nats" not in results
    assert results["n_images"] == len(digits)
    assert results["kl_nats"] >= 0
    assert results["neg_elbo_nats"] == pytest.approx(results["recon_nats"] + results["kl_nats"])
    assert 0 <= results["active_units"] <= vae.config.latent_dim
    assert -1 <= results["ssim"] <= 1
    assert 0 < results["psnr_db"] < 60
    assert results["pixels"] == "grey-level"
    assert all(math.isfinite(results[key]) for key in ("neg_elbo_nats", "bits_per_dim", "psnr_db"))


def test_results_are_deterministic_and_batching_does_not_matter(digits: np.ndarray) -> None:
    vae = tiny_vae()
    first = evaluate(vae, digits, seed=5)
    assert evaluate(vae, digits, seed=5) == first
    rebatched = evaluate(vae, digits, seed=5, batch_size=7)
    for key in ("kl_nats", "psnr_db", "ssim", "active_units"):  # sampling-free figures
        assert rebatched[key] == pytest.approx(first[key])


def test_elbo_is_an_expectation_not_the_posterior_mean(digits: np.ndarray) -> None:
    # Different seeds draw different z, so the one-sample estimate moves; the KL does not.
    vae = tiny_vae()
    a, b = evaluate(vae, digits, seed=1), evaluate(vae, digits, seed=2)
    assert a["recon_nats"] != b["recon_nats"]
    assert a["kl_nats"] == pytest.approx(b["kl_nats"])


def test_iwae_tightens_the_bound(digits: np.ndarray) -> None:
    # A deliberately sloppy posterior (too wide) and a decoder that listens to z: the ELBO is then
    # visibly loose, and importance weighting must recover part of the gap.
    vae = tiny_vae()
    with torch.no_grad():
        vae.encoder.head[-1].bias[4:] = 1.0  # log-variances of q(z|x)
        vae.decoder.project[0].weight *= 5
    images = digits[:12]
    elbo = float(np.mean([evaluate(vae, images, seed=s)["neg_elbo_nats"] for s in range(4)]))
    one = evaluate(vae, images, iwae_samples=1)["iwae_nats"]
    many = evaluate(vae, images, iwae_samples=64)
    assert many["iwae_samples"] == 64
    assert one == pytest.approx(elbo, abs=1.5)  # K = 1 is a one-sample ELBO again
    assert many["iwae_nats"] < elbo - 1.0
    assert many["iwae_nats"] < one
    assert many["iwae_nats"] < many["neg_elbo_nats"]


def test_iwae_log_weights_match_torch_distributions() -> None:
    vae = tiny_vae(likelihood="gaussian")
    x = torch.rand(3, 1, 28, 28)
    mean, logvar = vae.encode(x)
    with torch.no_grad():
        ours = evaluation.iwae_bound(vae, x, mean, logvar, 5, torch.Generator().manual_seed(0))
        # Recompute with torch.distributions, drawing the same noise in the same order.
        noise = torch.randn((5, *mean.shape), generator=torch.Generator().manual_seed(0))
        std = (0.5 * logvar).exp()
        z = mean + noise * std
        prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        posterior = torch.distributions.Normal(mean, std).log_prob(z).sum(-1)
        scale = vae.log_scale.exp().item()
        likelihood = torch.stack(
            [
                torch.distributions.Normal(vae.decode(z[k]), scale).log_prob(x).flatten(1).sum(1)
                for k in range(5)
            ]
        )
        reference = -(torch.logsumexp(likelihood + prior - posterior, dim=0) - math.log(5))
    assert torch.allclose(ours.float(), reference, rtol=1e-5)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "laplace"])
def test_bits_per_dim_formula(digits: np.ndarray, likelihood: str) -> None:
    vae = tiny_vae(likelihood=likelihood)
    results = evaluate(vae, digits)
    dims = 28 * 28
    shift = math.log(256) if likelihood != "bernoulli" else 0.0  # density on [0,1] -> 8-bit bins
    assert results["bits_per_dim"] == pytest.approx(
        (results["neg_elbo_nats"] + dims * shift) / (dims * math.log(2))
    )
    assert "not binarized" in results["bits_per_dim_note"]


def test_active_units_count_only_dimensions_that_vary(digits: np.ndarray) -> None:
    vae = tiny_vae(arch="mlp", widths=[32], latent_dim=5)
    last = vae.encoder.net[-1]
    with torch.no_grad():
        last.weight[:5].zero_()
        last.bias[:5].zero_()
        last.weight[0] = torch.randn(32) * 3  # only dimension 0 of the mean depends on the image
        last.bias[1] = 2.0  # dimension 1 is constant (far from 0, yet inactive)
    assert evaluate(vae, digits)["active_units"] == 1
    with torch.no_grad():
        last.weight[0].zero_()
    assert evaluate(vae, digits)["active_units"] == 0


def test_psnr_and_ssim_are_those_of_the_mean_reconstruction(digits: np.ndarray) -> None:
    # Compare PSNR/SSIM of the mean reconstruction with what metrics says about the same arrays.
    from latentz import imaging, metrics

    vae = tiny_vae()
    results = evaluate(vae, digits)
    with torch.no_grad():
        mean, _ = vae.encode(torch.from_numpy(imaging.to_float_nchw(digits)))
        reconstruction = imaging.to_uint8_nhwc(vae.decode_mean(mean).numpy())
    assert results["psnr_db"] == pytest.approx(metrics.psnr(digits, reconstruction))
    assert results["ssim"] == pytest.approx(metrics.ssim(digits, reconstruction))


def test_wrong_images_are_refused(digits: np.ndarray) -> None:
    vae = tiny_vae()
    with pytest.raises(ValueError, match="uint8 images shaped"):
        evaluate(vae, digits.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(N, 28, 28, 1\)"):
        evaluate(vae, np.repeat(digits, 3, axis=3))
    with pytest.raises(ValueError, match="no images"):
        evaluate(vae, digits[:0])
    with pytest.raises(ValueError, match="at least 1 sample"):
        evaluate(vae, digits, iwae_samples=0)


# -- CLI ----------------------------------------------------------------------------------------
def test_cli_prints_one_valid_json_object(tiny_bundle: Path) -> None:
    result = CliRunner().invoke(app, ["eval", str(tiny_bundle), "--json", "--limit", "12", "--iwae", "4"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert EXPECTED_KEYS | {"iwae_nats", "data", "split", "model"} <= set(report)
    assert report["n_images"] == 12 and report["split"] == "test" and report["model"] == "tiny"
    assert report["pixels"] == "grey-level"


def test_cli_table_states_grey_level(tiny_bundle: Path, idx_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["eval", str(tiny_bundle), "--data", f"idx:{idx_path}", "--split", "val", "--limit", "8"]
    )
    assert result.exit_code == 0, result.output
    assert "grey-level" in result.stdout and "not binarized" in result.stdout
    assert "negative ELBO" in result.stdout


def test_cli_evaluates_a_file_it_is_given_whole(tiny_bundle: Path, tmp_path: Path) -> None:
    """A file the user names, with no training file beside it, is not cut down to a 10% split."""
    named = tmp_path / "my-digits-images-idx3-ubyte.gz"
    write_idx(named, make_digits(50, seed=7)[0])
    report = json.loads(
        CliRunner().invoke(app, ["eval", str(tiny_bundle), "--data", f"idx:{named}", "--json"]).stdout
    )
    assert report["n_images"] == 50 and report["split"] == "all"
    assert (
        "Every image" in report["split_reason"]
        and "not the data set tiny was trained on" in report["split_reason"]
    )
    table = CliRunner().invoke(app, ["eval", str(tiny_bundle), "--data", f"idx:{named}"])
    assert table.exit_code == 0 and "Every image of" in " ".join(table.stdout.split())
    asked = CliRunner().invoke(
        app, ["eval", str(tiny_bundle), "--data", f"idx:{named}", "--split", "val", "--json"]
    )
    assert json.loads(asked.stdout)["n_images"] == 5


@pytest.mark.parametrize("spelling", ["absolute", "a copy elsewhere"])
def test_cli_keeps_the_held_out_split_for_the_models_own_data(
    mnist_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    """mnist-z10's own digits, however they are named, give the 900 it held out, never all 9,000."""
    path = mnist_path.resolve()
    if spelling == "a copy elsewhere":
        path = tmp_path / "copy" / REAL_MNIST.name
        path.parent.mkdir()
        path.write_bytes(mnist_path.read_bytes())
    monkeypatch.chdir(tmp_path)  # the card's relative path does not resolve from here
    result = CliRunner().invoke(
        app, ["eval", "mnist-z10", "--data", f"idx:{path}", "--json", "--limit", "20"]
    )
    report = json.loads(result.stdout)
    assert report["split"] == "test" and "held out" in report["split_reason"]
    assert "held-out 10% of 9000" in report["split_note"]


@pytest.fixture(scope="module")
def fashion_train() -> Path:
    """Fashion-MNIST's training file (Debian's dataset-fashion-mnist or $LATENTZ_DATA), when installed."""
    try:
        return resolve_named("fashion-mnist")[0]
    except DatasetError as error:
        pytest.skip(str(error))


def test_cli_tells_the_training_file_from_a_lookalike(
    tmp_path: Path, fashion_train: Path, mnist_path: Path
) -> None:
    """fashion-z10 was trained on `fashion-mnist`, whose train-images-idx3-ubyte.gz has the name and
    image count of MNIST's own: only a copy of the very file counts as its training data."""
    lookalike = tmp_path / "digits" / fashion_train.name
    lookalike.parent.mkdir()
    digits = load_dataset(f"idx:{mnist_path}", split="all").images[..., 0]
    write_idx(lookalike, np.resize(digits, (60_000, 28, 28)), compress=False)  # sniffed, not named
    copy = tmp_path / "copy" / fashion_train.name
    copy.parent.mkdir()
    shutil.copy(fashion_train, copy)
    reports = {
        name: json.loads(
            CliRunner()
            .invoke(app, ["eval", "fashion-z10", "--data", f"idx:{path}", "--json", "--limit", "4"])
            .stdout
        )
        for name, path in (("lookalike", lookalike), ("copy", copy))
    }
    assert (
        reports["lookalike"]["split"] == "all" and "not the data set" in reports["lookalike"]["split_reason"]
    )
    assert reports["copy"]["split"] == "test" and "held-out 10% of 60000" in reports["copy"]["split_note"]


def test_cli_finds_the_cards_data_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mnist-z10's card names its digits relative to the folder it was trained in (the checkout):
    the README's `latentz eval mnist-z10` works from anywhere, on the digits it held out."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["eval", "mnist-z10", "--json", "--limit", "32"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["data"].startswith("idx:/") and report["data"].endswith("mnist9k-images-idx3-ubyte.gz")
    assert report["n_images"] == 32


def test_cli_says_the_default_data_came_from_the_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle copied away from its data: the error says the path came from its card and that
    --data exists."""
    copied = tmp_path / "elsewhere" / "mnist-z10"
    shutil.copytree(bundle.resolve_bundle("mnist-z10"), copied)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["eval", str(copied), "--json"])
    assert result.exit_code == 2 and result.stdout == ""
    assert "card of mnist-z10" in result.output and "pass --data SPEC" in result.output
    assert "Traceback" not in result.output


def test_cli_errors_are_one_clear_line(tiny_bundle: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["eval", str(tmp_path / "nope"), "--json"])
    assert missing.exit_code == 2 and "no model named" in missing.output
    bad_data = runner.invoke(app, ["eval", str(tiny_bundle), "--data", "idx:/nonexistent.gz"])
    assert bad_data.exit_code == 2 and "no such file" in bad_data.output
    bad_split = runner.invoke(app, ["eval", str(tiny_bundle), "--split", "dev"])
    assert bad_split.exit_code == 2 and "unknown split" in bad_split.output
    for result in (missing, bad_data, bad_split):
        assert "Traceback" not in result.output


def test_cli_refuses_weights_that_do_not_match_the_card(tiny_bundle: Path) -> None:
    save_weights(tiny_vae(seed=1), tiny_bundle / bundle.WEIGHTS_FILE)
    result = CliRunner().invoke(app, ["eval", str(tiny_bundle), "--json"])
    assert result.exit_code == 2 and "fingerprint" in result.output
