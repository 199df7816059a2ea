"""metrics: PSNR against its formula, SSIM against an independent brute-force computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from latentz import metrics


def brute_force_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two single-channel images, window by window with explicit weighted statistics.

    Deliberately unlike the library: no separable filtering, no E[x^2] - E[x]^2 shortcut (it uses
    weighted central moments directly), a 2-D Gaussian built with an outer product, plain loops.
    """
    sigma, size = 1.5, 11
    offsets = np.arange(size) - size // 2
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = a.astype(np.float64), b.astype(np.float64)
    values = []
    for top in range(x.shape[0] - size + 1):
        for left in range(x.shape[1] - size + 1):
            wx = x[top : top + size, left : left + size]
            wy = y[top : top + size, left : left + size]
            mx, my = (kernel * wx).sum(), (kernel * wy).sum()
            vx = (kernel * (wx - mx) ** 2).sum()
            vy = (kernel * (wy - my) ** 2).sum()
            cov = (kernel * (wx - mx) * (wy - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def random_image(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def noisy(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


# -- PSNR -------------------------------------------------------------------------------------
def test_psnr_matches_the_formula() -> None:
    a = np.zeros((4, 4, 1), dtype=np.uint8)
    b = np.full((4, 4, 1), 16, dtype=np.uint8)
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 256))  # 24.048 dB
    c = a.copy()
    c[0, 0, 0] = 255  # one pixel off by the peak: MSE = 255^2 / 16
    assert metrics.psnr(a, c) == pytest.approx(10 * math.log10(16))


def test_psnr_of_identical_images_is_infinite() -> None:
    image = random_image((8, 8, 3), 0)
    assert metrics.psnr(image, image) == math.inf


def test_psnr_per_image_and_batch_mean() -> None:
    a = np.zeros((3, 4, 4, 1), dtype=np.uint8)
    b = a.copy()
    b[0] = 1
    b[1] = 4
    b[2] = 16
    per_image = metrics.psnr_per_image(a, b)
    expected = [10 * math.log10(255**2 / d**2) for d in (1, 4, 16)]
    assert per_image == pytest.approx(expected)
    assert metrics.psnr(a, b) == pytest.approx(np.mean(expected))  # mean of per-image PSNRs


def test_metrics_refuse_mismatched_or_float_input() -> None:
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(np.zeros((4, 4, 1), np.uint8), np.zeros((4, 5, 1), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        metrics.ssim(np.zeros((16, 16, 1), np.float32), np.zeros((16, 16, 1), np.float32))
    with pytest.raises(ValueError, match="batches"):
        metrics.psnr_per_image(np.zeros((4, 4, 1), np.uint8), np.zeros((4, 4, 1), np.uint8))


# -- SSIM -------------------------------------------------------------------------------------
def test_ssim_of_identical_images_is_one() -> None:
    image = random_image((20, 24, 3), 1)
    assert metrics.ssim(image, image) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_two_constant_images_is_the_luminance_term() -> None:
    # Flat images have zero variance, so SSIM reduces to (2ab + C1) / (a^2 + b^2 + C1), by hand:
    # (2*100*110 + 6.5025) / (100^2 + 110^2 + 6.5025) = 22006.5025 / 22106.5025.
    a = np.full((16, 16, 1), 100, dtype=np.uint8)
    b = np.full((16, 16, 1), 110, dtype=np.uint8)
    assert metrics.ssim(a, b) == pytest.approx(22006.5025 / 22106.5025, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_matches_a_brute_force_computation(seed: int) -> None:
    a = random_image((15, 17, 1), seed)
    b = noisy(a, 30, seed + 10)
    assert metrics.ssim(a, b) == pytest.approx(brute_force_ssim(a[:, :, 0], b[:, :, 0]), rel=1e-9)


def test_ssim_averages_channels_and_images() -> None:
    a = random_image((2, 14, 14, 3), 5)
    b = noisy(a, 25, 6)
    per_channel = [brute_force_ssim(a[n, :, :, c], b[n, :, :, c]) for n in range(2) for c in range(3)]
    assert metrics.ssim(a, b) == pytest.approx(np.mean(per_channel), rel=1e-9)


def test_ssim_orders_distortions_and_is_symmetric() -> None:
    rows, cols = np.mgrid[0:32, 0:32]
    image = ((np.sin(rows / 3) + np.cos(cols / 4)) * 60 + 128).astype(np.uint8)[:, :, None]
    light, heavy = noisy(image, 5, 0), noisy(image, 40, 1)
    assert 1 > metrics.ssim(image, light) > metrics.ssim(image, heavy) > 0
    assert metrics.ssim(image, heavy) == pytest.approx(metrics.ssim(heavy, image))
    inverted = (255 - image).astype(np.uint8)
    assert -1 <= metrics.ssim(image, inverted) < 0  # anti-correlated structure scores negative


def test_ssim_needs_the_window_to_fit() -> None:
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(np.zeros((10, 30, 1), np.uint8), np.zeros((10, 30, 1), np.uint8))


# -- MS-SSIM ----------------------------------------------------------------------------------
def test_ms_ssim_bounds_and_ordering() -> None:
    rows, cols = np.mgrid[0:180, 0:190]
    image = np.stack(
        [
            (np.sin(rows / 7) * np.cos(cols / 5) * 100 + 128),
            (rows + cols) / 370 * 255,
            np.full(rows.shape, 90),
        ],
        axis=-1,
    ).astype(np.uint8)
    assert metrics.ms_ssim(image, image) == pytest.approx(1.0)
    light, heavy = metrics.ms_ssim(image, noisy(image, 5, 0)), metrics.ms_ssim(image, noisy(image, 50, 1))
    assert 1 > light > heavy >= 0
    batch = np.stack([image, image])
    assert metrics.ms_ssim(batch, batch) == pytest.approx(1.0)


def test_ms_ssim_names_the_minimum_size() -> None:
    assert metrics.ms_ssim_min_size() == 176
    small = np.zeros((175, 300, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="at least 176x176"):
        metrics.ms_ssim(small, small)
