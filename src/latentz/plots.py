"""PNG figures for bundles and reports: image grids, traversals, loss curves and RD curves.

Everything takes numpy arrays (images as uint8 ``(N, H, W, C)``) so this module never needs torch.
Figures are drawn on matplotlib's Agg canvas through the object API, never ``pyplot``: no GUI, no
global backend switch, no figure registry that leaks memory in a long-running server. Small
images (28x28 digits) are upscaled with nearest-neighbour so pixels stay crisp and readable.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

#: Tiles smaller than this (in pixels) are upscaled by an integer factor so they are not postage stamps.
MIN_TILE_SIDE = 84
TILE_GAP = 2
DPI = 100


class PlotError(ValueError):
    """Arrays that cannot be drawn (wrong shape or dtype)."""


def _check_images(images: np.ndarray, ndim: int, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise PlotError(f"{what} must be uint8 images, got dtype {images.dtype}")
    if images.ndim != ndim or images.shape[-1] not in (1, 3):
        raise PlotError(f"{what} must have {ndim} dimensions ending in 1 or 3 channels, got {images.shape}")
    if 0 in images.shape:
        raise PlotError(f"{what} is empty: shape {images.shape}")
    return images


def _mosaic(tiles: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Lay out (rows, cols, H, W, C) tiles with white gaps; returns the image and the tile pitch."""
    rows, cols, height, width, channels = tiles.shape
    factor = max(1, math.ceil(MIN_TILE_SIDE / max(height, width)))
    if factor > 1:
        tiles = tiles.repeat(factor, axis=2).repeat(factor, axis=3)
        height, width = height * factor, width * factor
    pitch_y, pitch_x = height + TILE_GAP, width + TILE_GAP
    canvas = np.full((rows * pitch_y - TILE_GAP, cols * pitch_x - TILE_GAP, channels), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            canvas[r * pitch_y : r * pitch_y + height, c * pitch_x : c * pitch_x + width] = tiles[r, c]
    return canvas, pitch_y, pitch_x


def _save(figure: Figure, out: Path) -> Path:
    """Render to memory, then write atomically, so a reader never sees half a PNG."""
    from latentz.files import atomic_write_bytes

    out = Path(out)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=DPI, format="png", facecolor="white")
    atomic_write_bytes(out, buffer.getvalue())
    return out


def plot_tile_grid(
    tiles: np.ndarray,
    out: Path,
    title: str,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    xlabel: str | None = None,
) -> Path:
    """Draw a (rows, cols, H, W, C) uint8 array of images as one labelled grid and save it as PNG."""
    tiles = _check_images(tiles, 5, "tiles")
    rows, cols = tiles.shape[:2]
    canvas, pitch_y, pitch_x = _mosaic(tiles)
    label_margin = 1.3 if row_labels else 0.25
    width_in = canvas.shape[1] / DPI + label_margin + 0.25
    height_in = canvas.shape[0] / DPI + 0.7 + (0.45 if col_labels else 0.0) + (0.3 if xlabel else 0.0)
    figure = Figure(figsize=(max(width_in, 3.5), height_in), layout="constrained")
    axes = figure.add_subplot()
    if canvas.shape[2] == 1:
        axes.imshow(canvas[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        axes.imshow(canvas, interpolation="nearest")
    axes.set_title(title, fontsize=12)
    for side in ("top", "right", "bottom", "left"):
        axes.spines[side].set_visible(False)
    tile_h, tile_w = pitch_y - TILE_GAP, pitch_x - TILE_GAP
    if row_labels:
        if len(row_labels) != rows:
            raise PlotError(f"{len(row_labels)} row labels for {rows} rows")
        axes.set_yticks([r * pitch_y + tile_h / 2 for r in range(rows)], list(row_labels), fontsize=9)
    else:
        axes.set_yticks([])
    if col_labels:
        if len(col_labels) != cols:
            raise PlotError(f"{len(col_labels)} column labels for {cols} columns")
        axes.set_xticks([c * pitch_x + tile_w / 2 for c in range(cols)], list(col_labels), fontsize=9)
    else:
        axes.set_xticks([])
    axes.tick_params(length=0)
    if xlabel:
        axes.set_xlabel(xlabel, fontsize=10)
    return _save(figure, out)


def _rows_of(images: np.ndarray, columns: int) -> np.ndarray:
    """(N, H, W, C) -> (rows, columns, H, W, C), padding the last row with white tiles."""
    count = images.shape[0]
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    padded = np.full((rows * columns, *images.shape[1:]), 255, np.uint8)
    padded[:count] = images
    return padded.reshape(rows, columns, *images.shape[1:])


def plot_samples(
    samples: np.ndarray, out: Path, title: str = "Samples from the prior", columns: int = 8
) -> Path:
    """A grid of images (prior samples, or any set of images)."""
    samples = _check_images(samples, 4, "samples")
    return plot_tile_grid(_rows_of(samples, columns), out, title)


def plot_reconstructions(
    originals: np.ndarray,
    reconstructions: np.ndarray,
    out: Path,
    title: str = "Validation images (top) and their reconstructions (below)",
    columns: int = 8,
) -> Path:
    """Originals above their reconstructions, in pairs of rows, so each column compares one image."""
    originals = _check_images(originals, 4, "originals")
    reconstructions = _check_images(reconstructions, 4, "reconstructions")
    if originals.shape != reconstructions.shape:
        raise PlotError(f"originals {originals.shape} and reconstructions {reconstructions.shape} differ")
    top, bottom = _rows_of(originals, columns), _rows_of(reconstructions, columns)
    paired = np.stack([top, bottom], axis=1).reshape(-1, *top.shape[1:])
    labels = ["original", "reconstruction"] * top.shape[0]
    return plot_tile_grid(paired, out, title, row_labels=labels)


def plot_traversal(
    grid: np.ndarray,
    out: Path,
    values: Sequence[float],
    row_labels: Sequence[str],
    title: str = "Latent traversals",
) -> Path:
    """Rows = latent dimensions, columns = the value that dimension is set to."""
    grid = _check_images(grid, 5, "traversal grid")
    col_labels = [f"{v:+g}" if v else "0" for v in values]
    return plot_tile_grid(
        grid, out, title, row_labels=row_labels, col_labels=col_labels, xlabel="value of the latent dimension"
    )


def plot_interpolation(
    strip: np.ndarray,
    out: Path,
    title: str = "Interpolation between two validation images' latent means",
) -> Path:
    """One row of images decoded along a straight line between two latents (t = 0 .. 1)."""
    strip = _check_images(strip, 4, "interpolation strip")
    count = strip.shape[0]
    labels = [f"{i / max(count - 1, 1):.2f}" for i in range(count)]
    return plot_tile_grid(strip[None], out, title, col_labels=labels, xlabel="t")


def plot_loss(history: Sequence[dict[str, Any]], out: Path, title: str = "Training curves") -> Path:
    """Train/val negative ELBO and KL per epoch, plus validation PSNR when it was measured."""
    if not history:
        raise PlotError("no epochs to plot")
    epochs = [row["epoch"] for row in history]

    def series(key: str) -> list[float] | None:
        values = [row.get(key) for row in history]
        return None if any(v is None for v in values) else [float(v) for v in values]  # type: ignore[arg-type]

    panels: list[tuple[str, list[tuple[str, str]]]] = [
        (
            "negative ELBO (nats / image)",
            [("train_neg_elbo", "train (epoch mean)"), ("val_neg_elbo", "validation")],
        ),
        ("KL (nats / image)", [("train_kl", "train (epoch mean)"), ("val_kl", "validation")]),
    ]
    if series("val_psnr") is not None:
        panels.append(("PSNR of the mean reconstruction (dB)", [("val_psnr", "validation")]))
    figure = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    figure.suptitle(title, fontsize=12)
    for index, (ylabel, keys) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for key, label in keys:
            values = series(key)
            if values is not None:
                axes.plot(epochs, values, marker="o", markersize=3, label=label)
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=9)
    return _save(figure, out)


def plot_rd(
    curves: dict[str, list[tuple[float, float]]],
    out: Path,
    title: str,
    xlabel: str = "bytes per image",
    ylabel: str = "PSNR (dB)",
) -> Path:
    """Rate-distortion curves: one line per codec, rate on a log x axis, quality on y."""
    if not curves or not any(curves.values()):
        raise PlotError("no rate-distortion points to plot")
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    axes = figure.add_subplot()
    for name, points in curves.items():
        finite = sorted((x, y) for x, y in points if x > 0 and math.isfinite(x) and math.isfinite(y))
        if not finite:
            continue
        xs, ys = zip(*finite, strict=True)
        axes.plot(xs, ys, marker="o", markersize=4, label=name)
    axes.set_xscale("log")
    # Labels at 1-2-5 steps in plain numbers (100, not 10^2); unlabelled minor ticks between them.
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=12)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=9)
    return _save(figure, out)
