"""The trainable half of the hyperprior codec (latentz.hyperprior) and its integer twin: training
lowers the rate-distortion loss, the exported integer h_s matches the simulated one, and decoded
symbols do not move when any floating-point path is perturbed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentz.codec import hyper
from latentz.hyperprior import (
    FactorizedDensity,
    HyperpriorCodec,
    HyperpriorConfig,
    bounded,
    gaussian_likelihood,
)

SMALL = HyperpriorConfig(
    widths=(8, 8, 8), latent_channels=12, hyper_channels=8, hyper_latent_channels=4, lambdas=(0.004, 0.03)
)


def smooth_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Blurry colour blobs: images a small codec can learn something about in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, size // 8, size // 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def codec() -> HyperpriorCodec:
    """A SMALL codec after a few hundred steps, calibrated and in integer-simulating mode."""
    torch.manual_seed(0)
    model = HyperpriorCodec(SMALL)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    images = smooth_images(32, 32, seed=1)
    for step in range(100):
        batch = images[(step * 4) % 32 :][:4]
        loss = model(batch, torch.tensor([0, 1, 0, 1]))["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        y = model.analyse(images)
        model.h_s.calibrate(torch.floor(model.h_a(y) + 0.5), tuple(y.shape[-2:]))
    return model.eval()


def test_training_lowers_the_rate_distortion_loss() -> None:
    torch.manual_seed(0)
    model = HyperpriorCodec(SMALL)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    images = smooth_images(8, 32, seed=2)
    levels = torch.tensor([0, 1] * 4)
    first = model(images, levels)
    for _ in range(60):
        out = model(images, levels)
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
    torch.manual_seed(1)
    last = model(images, levels)
    assert float(last["loss"].detach()) < 0.7 * float(first["loss"].detach())
    assert float(last["mse"].mean()) < 0.7 * float(first["mse"].mean())
    assert torch.all(last["bpp_y"] > 0) and torch.all(last["bpp_z"] > 0)
    bpp = last["bpp_y"] + last["bpp_z"]
    assert float(bpp[levels == 1].mean()) > float(bpp[levels == 0].mean())  # higher λ, finer steps


def test_gaussian_likelihood_is_a_distribution_over_the_integers() -> None:
    values = torch.arange(-60, 61, dtype=torch.float64)
    for scale in (0.11, 1.0, 7.5):
        p = gaussian_likelihood(values, torch.tensor(math.log(scale), dtype=torch.float64))
        assert abs(float(p.sum()) - 1) < 1e-6
        exact = 0.5 * (math.erf(0.5 / (scale * math.sqrt(2))) - math.erf(-0.5 / (scale * math.sqrt(2))))
        assert abs(float(p[60]) - exact) < 1e-9


def test_bounded_clamps_but_lets_gradients_bring_values_back() -> None:
    x = torch.tensor([-2.0, 0.5, 9.0], requires_grad=True)
    y = bounded(x, 0.0, 5.0)
    assert y.tolist() == [0.0, 0.5, 5.0]
    (y * torch.tensor([-1.0, 1.0, 1.0])).sum().backward()  # descent raises x[0] and lowers x[2]
    assert x.grad.tolist() == [-1.0, 1.0, 1.0]
    x.grad = None
    (bounded(x, 0.0, 5.0) * torch.tensor([1.0, 1.0, -1.0])).sum().backward()  # would push further out
    assert x.grad.tolist() == [0.0, 1.0, 0.0]


def test_factorized_tables_follow_the_learned_density() -> None:
    torch.manual_seed(0)
    density = FactorizedDensity(3)
    values = torch.arange(-40, 41, dtype=torch.float32)
    tables = density.tables()
    p = density.likelihood(values.view(1, 1, 1, -1).expand(1, 3, 1, -1)).detach().double()[0, :, 0]
    for channel in range(3):
        pmf = tables.pmfs[channel]
        symbols = np.arange(len(pmf) - 1) + tables.offsets[channel]
        inside = (symbols >= -40) & (symbols <= 40)
        coded = pmf[:-1][inside] / (1 << hyper.PMF_BITS)
        assert np.allclose(coded, p[channel].numpy()[symbols[inside] + 40], atol=1e-4)


def test_the_integer_twin_matches_the_simulated_integer_network(codec: HyperpriorCodec) -> None:
    z = torch.floor(codec.h_a(codec.analyse(smooth_images(4, 64, seed=3))) + 0.5).detach()
    with torch.no_grad():
        mean_sim, index_sim = codec.h_s(z, (4, 4))
    twin = codec.h_s.to_integer()
    agree, scale = [], float(mean_sim.abs().max())
    for i in range(len(z)):
        index, mean = twin(z[i].long().numpy(), (4, 4))
        agree.append(np.mean(index == index_sim[i].numpy()))
        assert np.abs(mean - mean_sim[i].numpy()).max() < 0.02 * scale
    assert np.mean(agree) > 0.99  # off only where the 15-bit requantisation lands on a tie


def encode(model: HyperpriorCodec, image: torch.Tensor, offsets: np.ndarray) -> tuple[bytes, dict]:
    with torch.no_grad():
        y = model.analyse(image)[0].numpy()
        z = torch.floor(model.h_a(torch.from_numpy(y)[None]) + 0.5)[0].long().numpy()
    twin = model.h_s.to_integer()
    raw, mean = twin(z, y.shape[1:])
    symbols = hyper.quantize(y, mean, hyper.step_sizes(offsets))
    parts = {"z_tables": model.z_density.tables(), "gaussian": hyper.build_gaussian_tables(), "twin": twin}
    payload = hyper.encode_latents(
        z, symbols, hyper.scale_indices(raw, offsets), parts["z_tables"], parts["gaussian"]
    )
    parts.update(z=z, y=symbols, y_shape=y.shape)
    return payload, parts


def test_decoded_symbols_ignore_every_floating_point_perturbation(codec: HyperpriorCodec) -> None:
    """Decode one file while perturbing what is float: torch threads and float64 for the float
    networks, noise on the float hyper-decoder's outputs and on the mean. The scale indices and
    symbols stay identical (they come from integers only); the pixels may move, and do."""
    offsets = codec.integer_levels()[1]
    payload, parts = encode(codec, smooth_images(1, 48, seed=4), offsets)
    twin = parts["twin"]
    size = parts["y_shape"][1:]

    def decode(perturb_mean: float, threads: int, dtype: torch.dtype) -> tuple[np.ndarray, ...]:
        torch.set_num_threads(threads)
        float_h_s = codec.h_s.to(dtype)  # a float reference decoder computes alongside, perturbed
        seen: list[np.ndarray] = []

        def indices_for(z: np.ndarray) -> np.ndarray:
            float_h_s.quantized = False  # the plain float network, as a float decoder would run it
            with torch.no_grad():
                _, float_index = float_h_s(torch.from_numpy(z).to(dtype)[None], size)
            float_h_s.quantized = True
            seen.append((float_index + perturb_mean * torch.randn_like(float_index)).double().numpy())
            raw, _ = twin(z, size)
            return hyper.scale_indices(raw, offsets)

        z, y = hyper.decode_latents(
            payload, parts["z"].shape, parts["y_shape"], parts["z_tables"], parts["gaussian"], indices_for
        )
        mean = twin(z, size)[1] + perturb_mean * np.random.default_rng(0).standard_normal(size).astype(
            np.float32
        )
        latent = hyper.dequantize(y, mean, hyper.step_sizes(offsets))
        with torch.no_grad():
            pixels = codec.to(dtype).synthesise(torch.from_numpy(latent).to(dtype)[None])
        codec.to(torch.float32)
        return z, y, hyper.scale_indices(twin(z, size)[0], offsets), pixels.float().numpy(), seen[0]

    threads = torch.get_num_threads()
    try:
        runs = [decode(0.0, 1, torch.float32), decode(0.0, 2, torch.float32), decode(0.0, 1, torch.float64),
                decode(1e-3, 1, torch.float32)]  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    reference = runs[0]
    assert np.array_equal(reference[0], parts["z"]) and np.array_equal(reference[1], parts["y"])
    for run in runs[1:]:
        for mine, theirs in zip(run[:3], reference[:3], strict=True):
            assert np.array_equal(mine, theirs)
    assert not np.array_equal(runs[3][3], reference[3])  # the perturbed mean did reach the pixels
    # The float h_s does differ between float32 and float64 (and more with noise): had the coder
    # used it, these decodes would not agree.
    assert 0 < np.abs(runs[2][4] - reference[4]).max() < 1e-4 < np.abs(runs[3][4] - reference[4]).max()
