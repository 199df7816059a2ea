"""Figures and tables for docs/photo-models.md and the README's photo codec section.

    .venv/bin/python scripts/photo_figures.py red-cars-64 --quality 50 --out docs/rd/red-cars-64

Writes ``pairs.png`` (held-out originals, the latentz reconstruction, and the best WebP whose file
is no bigger, each labelled with bytes and PSNR) and ``tones.json`` (do blacks, whites and the
car's red survive?). Torch-free: it runs the bundle like any receiver would.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from latentz import imaging, metrics, runtime
from latentz.data import load_bundle_split


def luminance(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def tone_report(originals: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    """Dark and bright ends of every image, and the colour of its reddest pixels (the car)."""
    lum_o, lum_d = luminance(originals), luminance(decoded)
    axes = (1, 2)
    red_o = originals[..., 0].astype(int) - originals[..., 1:].max(-1)
    report: dict[str, float] = {
        "p1_luma_original": float(np.percentile(lum_o, 1, axis=axes).mean()),
        "p1_luma_decoded": float(np.percentile(lum_d, 1, axis=axes).mean()),
        "p99_luma_original": float(np.percentile(lum_o, 99, axis=axes).mean()),
        "p99_luma_decoded": float(np.percentile(lum_d, 99, axis=axes).mean()),
        "share_pixels_below_16_original": float((lum_o < 16).mean()),
        "share_pixels_below_16_decoded": float((lum_d < 16).mean()),
        "share_pixels_above_239_original": float((lum_o > 239).mean()),
        "share_pixels_above_239_decoded": float((lum_d > 239).mean()),
    }
    car = red_o > 60  # clearly red pixels of the original
    for index, name in enumerate("rgb"):
        report[f"car_mean_{name}_original"] = float(originals[..., index][car].mean())
        report[f"car_mean_{name}_decoded"] = float(decoded[..., index][car].mean())
    report["car_pixels"] = int(car.sum())
    return report


def draw_pairs(rows: list[dict], out: Path, title: str) -> None:
    """One column per image: the original on top, latentz below it, the same-budget WebP at the bottom."""
    side = rows[0]["original"].shape[0]
    scale = max(1, 128 // side)
    figure = Figure(figsize=(len(rows) * 1.75, 3 * 2.2 + 0.4), dpi=100)
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=9)
    for c, row in enumerate(rows):
        panels = [
            (row["original"], "original"),
            (row["latentz"], f"latentz {row['latentz_bytes']} B\n{row['latentz_psnr']:.1f} dB"),
            (row["webp"], f"WebP q{row['webp_quality']} {row['webp_bytes']} B\n{row['webp_psnr']:.1f} dB"),
        ]
        for r, (image, label) in enumerate(panels):
            axis = figure.add_subplot(3, len(rows), r * len(rows) + c + 1)
            axis.imshow(image.repeat(scale, 0).repeat(scale, 1), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_xlabel(label, fontsize=7)
    figure.tight_layout(rect=(0, 0, 1, 0.96), h_pad=1.2)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--quality", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model = runtime.load(args.model)
    card = model.info.card
    images = load_bundle_split(
        model.info.path,
        card["data"],
        "val",
        image_size=model.config.image_size,
        channels=model.config.channels,
    ).images
    files = [model.compress(image, quality=args.quality) for image in images]
    decoded = np.stack([model.decompress(data) for data in files])
    rows = []
    for index in np.linspace(0, len(images) - 1, args.pairs).round().astype(int):
        webp_quality, webp, _ = imaging.webp_within(images[index], len(files[index]))
        webp_image = imaging.load_array(webp, None, 3)
        rows.append(
            {
                "original": images[index],
                "latentz": decoded[index],
                "latentz_bytes": len(files[index]),
                "latentz_psnr": float(metrics.psnr(images[index][None], decoded[index][None])),
                "webp": webp_image,
                "webp_quality": webp_quality,
                "webp_bytes": len(webp),
                "webp_psnr": float(metrics.psnr(images[index][None], webp_image[None])),
            }
        )
    side = images.shape[1]
    draw_pairs(
        rows,
        args.out / "pairs.png",
        f"{model.name}, held-out cars at {side}x{side}: latentz quality {args.quality} (middle) vs the "
        f"best WebP no bigger (bottom)",
    )
    same_budget = [
        imaging.webp_within(image, len(data))[1] for image, data in zip(images, files, strict=True)
    ]
    webp_all = np.stack([imaging.load_array(data, None, 3) for data in same_budget])
    summary = {
        "model": model.name,
        "quality": args.quality,
        "n_images": len(images),
        "latentz_mean_bytes": float(np.mean([len(f) for f in files])),
        "latentz_psnr": metrics.psnr(images, decoded),
        "webp_same_budget_mean_bytes": float(np.mean([len(d) for d in same_budget])),
        "webp_same_budget_psnr": metrics.psnr(images, webp_all),
        "webp_same_budget_note": "per image, the highest WebP quality whose file is no bigger than latentz's",
        "tones_latentz": tone_report(images, decoded),
        "tones_webp_same_budget": tone_report(images, webp_all),
    }
    (args.out / "tones.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
