"""Figures: each writes a real PNG that shows the given pixels, and bad arrays get a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentz import plots


def digits(count: int, seed: int = 0) -> np.ndarray:
    """Fake 28x28 grey 'digits': a bright bar on black, so they are easy to find in the PNG."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28, 1), np.uint8)
    for i in range(count):
        column = int(rng.integers(4, 24))
        images[i, 4:24, column : column + 3] = 255
    return images


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_samples_grid_is_a_png_with_upscaled_tiles(tmp_path: Path) -> None:
    out = plots.plot_samples(digits(20), tmp_path / "samples.png", title="samples", columns=5)
    pixels = read_png(out)
    # 4 rows of 28-pixel digits upscaled to at least MIN_TILE_SIDE each: no postage stamps.
    assert pixels.shape[0] >= 4 * plots.MIN_TILE_SIDE and pixels.shape[1] >= 5 * plots.MIN_TILE_SIDE
    assert (pixels == 0).all(axis=2).sum() > 1000 and (pixels == 255).all(axis=2).sum() > 1000


def test_colour_tiles_keep_their_colour(tmp_path: Path) -> None:
    red = np.zeros((3, 64, 64, 3), np.uint8)
    red[..., 0] = 250
    pixels = read_png(plots.plot_samples(red, tmp_path / "red.png"))
    is_red = (pixels[..., 0] > 240) & (pixels[..., 1] < 15) & (pixels[..., 2] < 15)
    assert is_red.sum() >= 3 * 64 * 64


def test_reconstructions_pair_rows(tmp_path: Path) -> None:
    originals = digits(10)
    out = plots.plot_reconstructions(originals, 255 - originals, tmp_path / "recon.png", columns=5)
    pixels = read_png(out)
    assert pixels.shape[0] > pixels.shape[1] * 0.5  # 4 rows (2 pairs) of 5 columns
    with pytest.raises(plots.PlotError, match="differ"):
        plots.plot_reconstructions(originals, originals[:5], tmp_path / "bad.png")


def test_traversal_and_interpolation(tmp_path: Path) -> None:
    grid = digits(6 * 7).reshape(6, 7, 28, 28, 1)
    values = np.linspace(-3, 3, 7).tolist()
    labels = [f"z{i}" for i in range(6)]
    traversal = read_png(plots.plot_traversal(grid, tmp_path / "traversal.png", values, labels))
    assert traversal.shape[0] >= 6 * plots.MIN_TILE_SIDE
    with pytest.raises(plots.PlotError, match="row labels"):
        plots.plot_traversal(grid, tmp_path / "bad.png", values, labels[:2])
    strip = read_png(plots.plot_interpolation(digits(10), tmp_path / "interpolation.png"))
    assert strip.shape[1] > 3 * strip.shape[0]  # a wide strip, not a square grid


def test_loss_curves(tmp_path: Path) -> None:
    history = [
        {
            "epoch": e,
            "train_neg_elbo": 200 - 10 * e,
            "val_neg_elbo": 205 - 9 * e,
            "train_kl": 5 + e,
            "val_kl": 5 + e,
            "val_psnr": 12 + e,
        }
        for e in range(1, 6)
    ]
    pixels = read_png(plots.plot_loss(history, tmp_path / "loss.png"))
    assert pixels.shape[1] > pixels.shape[0]  # three panels side by side
    assert read_png(plots.plot_loss(history[:1], tmp_path / "one.png")).size > 0
    with pytest.raises(plots.PlotError, match="no epochs"):
        plots.plot_loss([], tmp_path / "empty.png")


def test_rd_curves_on_a_log_axis(tmp_path: Path) -> None:
    curves = {
        "latentz": [(40.0, 18.5), (20.0, 16.0), (80.0, 19.0)],
        "JPEG": [(300.0, 20.0), (600.0, 25.0), (1200.0, 30.0), (0.0, 10.0)],  # a zero rate is skipped
        "WebP": [(200.0, 21.0), (500.0, 27.0)],
    }
    out = plots.plot_rd(curves, tmp_path / "rd.png", title="MNIST")
    assert read_png(out).shape[1] >= 600
    with pytest.raises(plots.PlotError):
        plots.plot_rd({"JPEG": []}, tmp_path / "empty.png", title="none")


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 8, 8, 1), np.float32), "uint8"),
        (np.zeros((8, 8, 1), np.uint8), "dimensions"),
        (np.zeros((2, 8, 8, 2), np.uint8), "channels"),
        (np.zeros((0, 8, 8, 1), np.uint8), "empty"),
    ],
)
def test_bad_arrays_are_refused(tmp_path: Path, images: np.ndarray, message: str) -> None:
    with pytest.raises(plots.PlotError, match=message):
        plots.plot_samples(images, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_plots_do_not_import_torch_or_pyplot() -> None:
    code = (
        "import sys, latentz.plots; "
        "assert 'torch' not in sys.modules, 'torch'; "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
