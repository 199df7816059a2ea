"""Image quality metrics on uint8 arrays: PSNR, SSIM and MS-SSIM, in plain numpy.

Torch-free and scipy-free so the server and the RD benchmark can score images without
either. All functions take uint8 images so that every caller measures on the same 8-bit
scale (peak 255): a float image in [0, 1] is refused instead of silently scoring nonsense.

SSIM follows Wang, Bovik, Sheikh and Simoncelli (2004): an 11x11 Gaussian window with
sigma 1.5, K1 = 0.01, K2 = 0.03, computed on the "valid" region only (as in the authors'
MATLAB code), per channel, then averaged. MS-SSIM follows Wang, Simoncelli and Bovik (2003)
with their five scale weights and 2x2 average-pool downsampling.
"""

from __future__ import annotations

import numpy as np

PEAK = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"metrics take uint8 images (peak 255), got {a.dtype} and {b.dtype}")
    if a.size == 0:
        raise ValueError("cannot score empty images")
    return a, b


def _as_batch(images: np.ndarray) -> np.ndarray:
    """(H, W) / (H, W, C) / (N, H, W, C) -> float64 (N, H, W, C)."""
    if images.ndim == 2:
        images = images[None, :, :, None]
    elif images.ndim == 3:
        images = images[None]
    elif images.ndim != 4:
        raise ValueError(f"expected (H, W), (H, W, C) or (N, H, W, C) images, got shape {images.shape}")
    return images.astype(np.float64)


def psnr_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB of each image of two uint8 batches ``(N, H, W, C)``; ``inf`` where identical."""
    a, b = _check_pair(a, b)
    if a.ndim != 4:
        raise ValueError(f"psnr_per_image takes (N, H, W, C) batches, got shape {a.shape}")
    difference = a.astype(np.float64) - b.astype(np.float64)
    mse = np.mean(difference * difference, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(PEAK * PEAK / mse)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB (peak 255) of two uint8 images; ``inf`` if identical.

    For a batch ``(N, H, W, C)`` this is the *mean of the per-image PSNRs* — the figure papers
    report and the one `latentz eval` and training print — not the PSNR of the pooled error.
    """
    a, b = _check_pair(a, b)
    if a.ndim == 4:
        return float(np.mean(psnr_per_image(a, b)))
    difference = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(difference * difference))
    return float("inf") if mse == 0 else float(10.0 * np.log10(PEAK * PEAK / mse))


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    window = np.exp(-(offsets**2) / (2 * sigma * sigma))
    return window / window.sum()


def _filter_valid(images: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation of (N, H, W, C) with ``window`` on the valid region (no padding)."""
    size = len(window)
    height, width = images.shape[1] - size + 1, images.shape[2] - size + 1
    rows = sum(weight * images[:, k : k + height] for k, weight in enumerate(window))
    return sum(weight * rows[:, :, k : k + width] for k, weight in enumerate(window))


def _ssim_maps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image and channel: (mean SSIM, mean contrast-structure term), each shaped (N, C)."""
    if min(a.shape[1], a.shape[2]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {a.shape[1]}x{a.shape[2]}"
        )
    window = _gaussian_window()
    c1 = (SSIM_K1 * PEAK) ** 2
    c2 = (SSIM_K2 * PEAK) ** 2
    mu_a = _filter_valid(a, window)
    mu_b = _filter_valid(b, window)
    var_a = _filter_valid(a * a, window) - mu_a * mu_a
    var_b = _filter_valid(b * b, window) - mu_b * mu_b
    covariance = _filter_valid(a * b, window) - mu_a * mu_b
    contrast_structure = (2 * covariance + c2) / (var_a + var_b + c2)
    luminance = (2 * mu_a * mu_b + c1) / (mu_a * mu_a + mu_b * mu_b + c1)
    return (luminance * contrast_structure).mean(axis=(1, 2)), contrast_structure.mean(axis=(1, 2))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two uint8 images ``(H, W, C)`` or batches ``(N, H, W, C)``, in [-1, 1].

    Averaged over channels and images. Images must be at least 11x11 (the window size).
    """
    a, b = _check_pair(a, b)
    per_image_channel, _ = _ssim_maps(_as_batch(a), _as_batch(b))
    return float(per_image_channel.mean())


def ms_ssim_min_size(scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Smallest side for which every one of the ``scales`` halvings still fits an 11x11 window."""
    side = SSIM_WINDOW
    for _ in range(scales - 1):
        side *= 2
    return side


def _downsample(images: np.ndarray) -> np.ndarray:
    """2x2 average pooling (drops an odd last row/column), as in the reference MS-SSIM code."""
    height, width = images.shape[1] // 2 * 2, images.shape[2] // 2 * 2
    images = images[:, :height, :width]
    return 0.25 * (
        images[:, 0::2, 0::2] + images[:, 1::2, 0::2] + images[:, 0::2, 1::2] + images[:, 1::2, 1::2]
    )


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Multi-scale SSIM of two uint8 images or batches, averaged over channels and images.

    Five scales, so the short side must be at least 176 pixels (11 * 2**4); smaller images raise
    ``ValueError`` naming that minimum. Negative contrast-structure terms are clipped to 0 before
    the fractional powers, so the result stays real and in [0, 1].
    """
    a, b = _check_pair(a, b)
    x, y = _as_batch(a), _as_batch(b)
    minimum = ms_ssim_min_size()
    if min(x.shape[1], x.shape[2]) < minimum:
        raise ValueError(
            f"MS-SSIM needs images of at least {minimum}x{minimum} pixels (5 scales of an 11x11 window), "
            f"got {x.shape[1]}x{x.shape[2]}; use ssim for smaller images"
        )
    product = np.ones(x.shape[0:1] + x.shape[3:4])
    for scale, weight in enumerate(MS_SSIM_WEIGHTS):
        full, contrast_structure = _ssim_maps(x, y)
        last = scale == len(MS_SSIM_WEIGHTS) - 1
        term = full if last else contrast_structure
        product = product * np.maximum(term, 0.0) ** weight
        if not last:
            x, y = _downsample(x), _downsample(y)
    return float(product.mean())
