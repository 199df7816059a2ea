"""Would a context model pay on top of `red-cars-hp`'s hyperprior? A training-free estimate.

    .venv/bin/python scripts/context_headroom.py [--fit 300]

A context model predicts each latent element from elements decoded before it. Before building one
(a new format version, a training run), this measures how much the latents the shipped bundle
produces still hold that such a model could use, with predictors fitted by least squares on
training photos and scored on the held-out ones, all at their own size, at qualities 10, 50, 90:

- **checkerboard, mean** (He et al. 2021's split): anchors (``i + j`` even) as today; every other
  element's mean moves by a per-channel linear function of its four anchor neighbours' symbols;
- **checkerboard, scale**: as above, plus the table index shifted by a fitted integer per bucket
  of the neighbours' summed magnitudes;
- **channel-wise, mean** (Minnen & Singh 2020's split, two slices): the second half of the
  channels' means move by a linear function of the first half's symbols at the same place.

It prints the ideal code length of ``y`` (the range coder is within 2 bytes of it) per image
before and after. A trained context model learns more than a linear fit, so this is a floor on
what one would gain, not a ceiling; it says whether the latents are already decorrelated.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from latentz import imaging, runtime
from latentz.codec import hyper
from latentz.data.folders import list_image_files
from latentz.data.sets import split_indices

RED_CARS = Path(__file__).resolve().parents[2] / "shared" / "data" / "red-cars"
QUALITIES = (10, 50, 90)
BUCKETS = 12


class Latents:
    """(quality, residual r = (y - μ) / step, table index) of photos, and their ideal code length."""

    def __init__(self, model: runtime.ModelRuntime, files: list[Path]) -> None:
        coder = model.coder
        self.items: list[tuple[int, np.ndarray, np.ndarray]] = []
        for path in files:
            y, z = model.encode(imaging.load_array(path, None, 3)[None])
            z_hat = np.floor(z[0].astype(np.float64) + 0.5).astype(np.int64)
            raw, mean = coder.hyper_decoder(z_hat, y.shape[2:])
            for quality in QUALITIES:
                offsets = coder.offsets(quality)
                residual = (y[0].astype(np.float64) - mean) / hyper.step_sizes(offsets)[:, None, None]
                self.items.append((quality, residual, hyper.scale_indices(raw, offsets)))
        tables = coder.gaussian
        radius = int(-tables.offsets.min())
        self.radius, self.costs = radius, np.zeros((tables.count, 2 * radius + 1))
        for table, pmf in enumerate(tables.pmfs):
            start = int(tables.offsets[table]) + radius
            self.costs[table] = hyper.PMF_BITS - np.log2(pmf[-1]) + 12  # escape, roughly
            self.costs[table, start : start + len(pmf) - 1] = hyper.PMF_BITS - np.log2(pmf[:-1])

    def bits(self, index: np.ndarray, symbols: np.ndarray) -> float:
        return float(self.costs[index, np.clip(symbols, -self.radius, self.radius) + self.radius].sum())

    def at(self, quality: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for q, residual, index in self.items:
            if quality is None or q == quality:
                yield residual, np.floor(residual + 0.5).astype(np.int64), index


def anchor_neighbours(symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(anchor mask (h, w), the four anchor neighbours' symbols (4, M, h, w), zero off the edge)."""
    rows, cols = np.indices(symbols.shape[1:])
    anchor = (rows + cols) % 2 == 0
    padded = np.pad(np.where(anchor, symbols, 0), ((0, 0), (1, 1), (1, 1)))
    near = np.stack([padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]])
    return anchor, near


def fit_checkerboard_mean(train: Latents) -> np.ndarray:
    """Per channel, least-squares weights of (4 neighbours, 1) predicting a non-anchor's residual."""
    channels = train.items[0][1].shape[0]
    gram, cross = np.zeros((channels, 5, 5)), np.zeros((channels, 5))
    for residual, symbols, _ in train.at():
        anchor, near = anchor_neighbours(symbols)
        features = np.concatenate([near, np.ones((1, *symbols.shape))])[:, :, ~anchor].transpose(1, 2, 0)
        gram += np.einsum("mni,mnj->mij", features, features)
        cross += np.einsum("mni,mn->mi", features, residual[:, ~anchor])
    return np.linalg.solve(gram + 1e-3 * np.eye(5), cross[..., None])[..., 0]


def checkerboard_symbols(residual: np.ndarray, symbols: np.ndarray, weights: np.ndarray) -> np.ndarray:
    anchor, near = anchor_neighbours(symbols)
    features = np.concatenate([near, np.ones((1, *symbols.shape))])
    predicted = np.einsum("imhw,mi->mhw", features, weights)
    return np.where(anchor, symbols, np.floor(residual - predicted + 0.5)).astype(np.int64)


def fit_scale_shifts(train: Latents, weights: np.ndarray) -> np.ndarray:
    """An integer index shift per bucket of summed neighbour magnitudes, each the best of -6..6."""
    totals = np.zeros((BUCKETS, 13))
    for residual, symbols, index in train.at():
        anchor, near = anchor_neighbours(symbols)
        buckets = np.minimum(np.abs(near).sum(0), BUCKETS - 1)
        coded = checkerboard_symbols(residual, symbols, weights)
        for bucket in range(BUCKETS):
            chosen = ~anchor[None] & (buckets == bucket)
            for k, shift in enumerate(range(-6, 7)):
                shifted = np.clip(index[chosen] + shift, 0, hyper.SCALE_LEVELS - 1)
                totals[bucket, k] += train.bits(shifted, coded[chosen])
    shifts = np.argmin(totals, axis=1).astype(np.int64) - 6
    return shifts


def first_half(symbols: np.ndarray, half: int) -> np.ndarray:
    """The channel-wise predictor's features: the first ``half`` channels' symbols and a 1, (half + 1, n)."""
    return np.concatenate([symbols[:half], np.ones((1, *symbols.shape[1:]))]).reshape(half + 1, -1)


def fit_channel_mean(train: Latents) -> np.ndarray:
    """Least-squares weights (first half + 1, second half) predicting the second half's residuals."""
    half = train.items[0][1].shape[0] // 2
    gram, cross = np.zeros((half + 1, half + 1)), None
    for residual, symbols, _ in train.at():
        features = first_half(symbols, half)
        target = residual[half:].reshape(len(residual) - half, -1)
        gram += features @ features.T
        cross = features @ target.T if cross is None else cross + features @ target.T
    return np.linalg.solve(gram + 1e-3 * np.eye(half + 1), cross)


def report(
    held_out: Latents, count: int, weights: np.ndarray, shifts: np.ndarray, channel: np.ndarray
) -> None:
    half = channel.shape[0] - 1
    print("| quality | today, B/image | checkerboard mean | + scale | channel-wise mean |")
    print("|---:|---:|---:|---:|---:|")
    for quality in QUALITIES:
        totals = np.zeros(4)
        for residual, symbols, index in held_out.at(quality):
            coded = checkerboard_symbols(residual, symbols, weights)
            anchor, near = anchor_neighbours(symbols)
            bucket = np.minimum(np.abs(near).sum(0), BUCKETS - 1)
            shifted = np.where(anchor, index, np.clip(index + shifts[bucket], 0, hyper.SCALE_LEVELS - 1))
            predicted = (channel.T @ first_half(symbols, half)).reshape(-1, *symbols.shape[1:])
            sliced = symbols.copy()
            sliced[half:] = np.floor(residual[half:] - predicted + 0.5)
            totals += [
                held_out.bits(index, symbols),
                held_out.bits(index, coded),
                held_out.bits(shifted, coded),
                held_out.bits(index, sliced),
            ]
        today = totals[0]
        cells = " | ".join(f"{100 * (t / today - 1):+.1f}%" for t in totals[1:])
        print(f"| {quality} | {today / 8 / count:,.0f} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=int, default=300, help="training photos to fit on")
    args = parser.parse_args()
    model = runtime.load("red-cars-hp")
    files = list_image_files(RED_CARS)
    train_ids, held_ids = split_indices(len(files), 0.1, 0)
    train = Latents(model, [files[i] for i in train_ids[: args.fit]])
    held_out = Latents(model, [files[i] for i in held_ids])
    weights = fit_checkerboard_mean(train)
    shifts = fit_scale_shifts(train, weights)
    print(f"fitted on {args.fit} training photos, scored on {len(held_ids)}; shifts {shifts.tolist()}")
    report(held_out, len(held_ids), weights, shifts, fit_channel_mean(train))


if __name__ == "__main__":
    main()
