"""The VAE architectures: shapes, gradients, the probability formulas, config errors, save/load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import distributions as D

from latentz import imaging
from latentz.bundle import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE
from latentz.config import LIKELIHOODS, ConfigError, ModelConfig, to_dict
from latentz.evaluation import evaluate
from latentz.models import (
    VAE,
    build_model,
    count_parameters,
    load_model,
    posterior,
    save_weights,
    to_network,
    to_uint8,
)
from latentz.objectives import elbo_terms

SHAPES = {
    "conv-28x28x1": dict(arch="conv", image_size=28, channels=1, widths=[8, 16], hidden=32),
    "mlp-28x28x1": dict(arch="mlp", image_size=28, channels=1, widths=[64, 32]),
    "conv-64x64x3": dict(arch="conv", image_size=64, channels=3, widths=[8, 8, 16, 16], hidden=32),
    "conv-128x128x3": dict(arch="conv", image_size=128, channels=3, widths=[4, 8, 8, 16, 16], hidden=32),
}


def tiny_model(shape: str, likelihood: str, latent_dim: int = 5) -> VAE:
    torch.manual_seed(0)
    return build_model(ModelConfig(**SHAPES[shape], latent_dim=latent_dim, likelihood=likelihood, scale=0.2))


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_forward_backward_shapes_and_gradients(shape: str, likelihood: str) -> None:
    model = tiny_model(shape, likelihood)
    config = model.config
    x = torch.rand(3, *config.image_shape)

    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (3, config.latent_dim)
    assert model.decode(mean).shape == (3, *config.image_shape)
    image = model.decode_mean(mean).detach()
    assert image.shape == (3, *config.image_shape)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0

    out = model(x, kl_weight=0.5)
    assert torch.isfinite(out["loss"])
    for key in ("recon", "kl", "neg_elbo"):
        assert out[key].shape == (3,) and torch.isfinite(out[key]).all()
    assert torch.allclose(out["neg_elbo"], out["recon"] + out["kl"])
    assert torch.allclose(out["loss"], (out["recon"] + 0.5 * out["kl"]).mean())

    out["loss"].backward()
    first_encoder = next(model.encoder.parameters())
    last_decoder = list(model.decoder.parameters())[-1]
    for parameter in (first_encoder, last_decoder):
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0
    if likelihood == "gaussian-learned":
        assert model.log_scale.grad is not None and float(model.log_scale.grad.abs().sum()) > 0
    else:
        assert not model.log_scale.requires_grad


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_log_likelihood_matches_torch_distributions(likelihood: str) -> None:
    model = tiny_model("conv-64x64x3", likelihood)
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 64)
    out = torch.randn(2, 3, 64, 64) * 0.3 + 0.5
    scale = model.log_scale.detach().exp().view(1, -1, 1, 1)
    if likelihood == "bernoulli":
        # Grey levels in [0, 1] as soft targets: the usual (un-normalised) Bernoulli form.
        expected = D.Bernoulli(logits=out, validate_args=False).log_prob(x)
    elif likelihood == "laplace":
        expected = D.Laplace(out, scale).log_prob(x)
    else:
        expected = D.Normal(out, scale).log_prob(x)
    got = model.log_likelihood(x, out)
    assert torch.allclose(got, expected.flatten(1).sum(1), rtol=1e-5, atol=1e-2)


def test_kl_matches_a_monte_carlo_estimate() -> None:
    torch.manual_seed(0)
    mean = torch.tensor([[0.5, -1.0, 0.0, 2.0]])
    logvar = torch.tensor([[0.0, -1.0, 0.7, -2.0]])
    posterior = D.Normal(mean, (0.5 * logvar).exp())
    prior = D.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    z = posterior.sample((200_000,))
    estimate = (posterior.log_prob(z) - prior.log_prob(z)).sum(-1).mean()
    exact = VAE.kl_divergence(mean, logvar)
    assert exact.shape == (1,)
    assert abs(float(exact[0]) - float(estimate)) < 0.02
    assert float(VAE.kl_divergence(torch.zeros(1, 4), torch.zeros(1, 4))[0]) == 0.0


def test_reparameterized_samples_follow_the_posterior() -> None:
    torch.manual_seed(0)
    mean = torch.full((50_000, 1), 1.5)
    logvar = torch.full((50_000, 1), math.log(0.25))
    z = VAE.reparameterize(mean, logvar)
    assert abs(float(z.mean()) - 1.5) < 0.01
    assert abs(float(z.std()) - 0.5) < 0.01


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(image_size=30, widths=[8, 16]), "divisible by 4"),
        (dict(image_size=64, widths=[8, 8, 8, 8, 8, 8, 8]), "divisible by 128"),
        (dict(channels=2), "channels"),
        (dict(latent_dim=0), "latent_dim"),
        (dict(widths=[]), "widths"),
        (dict(likelihood="poisson"), "likelihood"),
        (dict(arch="transformer"), "arch"),
        (dict(likelihood="gaussian", scale=0.0), "scale"),
    ],
)
def test_impossible_configs_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)


def test_mlp_accepts_any_image_size() -> None:
    model = build_model(ModelConfig(arch="mlp", image_size=30, channels=1, widths=[16], latent_dim=2))
    assert model.decode_mean(torch.zeros(1, 2)).shape == (1, 1, 30, 30)


def _as_bundle(model: VAE, folder: Path) -> Path:
    folder.mkdir()
    (folder / CONFIG_FILE).write_text(json.dumps(to_dict(model.config)))
    (folder / CARD_FILE).write_text(json.dumps({"name": folder.name}))
    save_weights(model, folder / WEIGHTS_FILE)
    return folder


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian-learned"])
def test_save_and_load_round_trip_gives_identical_outputs(tmp_path: Path, likelihood: str) -> None:
    model = tiny_model("conv-28x28x1", likelihood)
    with torch.no_grad():  # make the learned scale differ from its initial value, so it must be saved
        model.log_scale.add_(0.3)
    folder = _as_bundle(model, tmp_path / "tiny")
    loaded = load_model(folder)
    assert not loaded.training
    assert count_parameters(loaded) == count_parameters(model)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        mean, logvar = model.encode(x)
        loaded_mean, loaded_logvar = loaded.encode(x)
        assert torch.equal(mean, loaded_mean) and torch.equal(logvar, loaded_logvar)
        assert torch.equal(model.decode_mean(mean), loaded.decode_mean(mean))
        assert torch.equal(model.log_scale, loaded.log_scale)


def test_sampling_is_reproducible_with_a_generator() -> None:
    model = tiny_model("mlp-28x28x1", "bernoulli")
    first = model.sample(4, generator=torch.Generator().manual_seed(7))
    again = model.sample(4, generator=torch.Generator().manual_seed(7))
    other = model.sample(4, generator=torch.Generator().manual_seed(8))
    assert first.shape == (4, 1, 28, 28)
    assert torch.equal(first, again) and not torch.equal(first, other)


# -- one objective, one image conversion, one posterior ---------------------------------------------
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian-learned"])
def test_the_forward_pass_and_evaluation_take_their_terms_from_elbo_terms(likelihood: str) -> None:
    """VAE.forward is elbo_terms with the global RNG's noise; `latentz eval`'s figures are the means
    of elbo_terms with its seeded generator's noise (the shards are compared in test_distributed)."""
    model = tiny_model("conv-28x28x1", likelihood)
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    out = model(x, kl_weight=0.3)
    torch.manual_seed(7)
    terms = elbo_terms(model, x)
    for key in ("recon", "kl", "neg_elbo"):
        assert torch.equal(out[key], getattr(terms, key)), key
    assert torch.equal(out["loss"], terms.loss(0.3).mean())

    images = torch.randint(
        0, 256, (6, 28, 28, 1), generator=torch.Generator().manual_seed(2), dtype=torch.uint8
    )
    results = evaluate(model, images.numpy(), seed=3)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        seeded = elbo_terms(
            model.eval(),
            torch.from_numpy(imaging.to_float_nchw(images.numpy())),
            lambda mean: torch.randn(mean.shape, generator=generator),
        )
    assert results["recon_nats"] == pytest.approx(float(seeded.recon.double().mean()), rel=1e-12)
    assert results["kl_nats"] == pytest.approx(float(seeded.kl.double().mean()), rel=1e-12)


def test_training_and_onnx_inputs_are_the_same_floats_and_posterior_encodes_every_image() -> None:
    """models.to_network and imaging.to_float_nchw give the same level / 255 (training keeps the
    batch channels-last, the layout it has always used); to_uint8 rounds them back exactly."""
    images = torch.randint(
        0, 256, (5, 16, 16, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    batch = to_network(images)
    assert batch.dtype == torch.float32 and batch.shape == (5, 3, 16, 16)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch, torch.from_numpy(imaging.to_float_nchw(images.numpy())))
    assert (to_uint8(batch) == images.numpy()).all()

    model = tiny_model("conv-64x64x3", "gaussian")
    photos = torch.randint(
        0, 256, (7, 64, 64, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )
    mean, logvar = posterior(model, photos.numpy(), batch_size=3)
    with torch.no_grad():
        expected_mean, expected_logvar = model.encode(to_network(photos))
    assert mean.shape == logvar.shape == (7, 5)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logvar, expected_logvar, rtol=1e-5, atol=1e-6)
