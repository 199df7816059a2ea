"""What an empty region costs: a flat grey 300x200 image (value 128) through each photo bundle at
every quality, against WebP and AVIF at theirs, in one run.

    .venv/bin/python bench/bench_flat_grey.py

Results go to bench/results/flat_grey.json (with each file's format version: red-cars-hp writes
the planar version 3 here) and a Markdown table is printed, with red-cars-hp's file over WebP's at
the same quality. Issue 12 asks that the rate-distortion codec cost at most twice WebP's file at
every quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from latentz import codec, imaging, metrics, runtime

OUT = Path(__file__).resolve().parent / "results" / "flat_grey.json"
MODELS = ("red-cars-hp", "red-cars-128", "red-cars-64")
QUALITIES = tuple(range(0, 101, 10))


def main() -> None:
    grey = np.full((200, 300, 3), 128, np.uint8)
    results: dict[str, list[dict[str, float]]] = {}
    for name in MODELS:
        model = runtime.load(name)
        rows = []
        for quality in QUALITIES:
            data = model.compress(grey, quality=quality)
            rows.append(
                {
                    "quality": quality,
                    "bytes": len(data),
                    "psnr": metrics.psnr(grey, model.decompress(data)),
                    "format_version": codec.unpack(data)[0].version,
                }
            )
        results[name] = rows
    for fmt in ("webp", "avif"):
        results[fmt] = [{"quality": q, "bytes": len(imaging.encode_with(grey, fmt, q))} for q in QUALITIES]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    results["red-cars-hp / webp"] = [
        {"quality": q, "ratio": ours["bytes"] / webp["bytes"]}
        for q, ours, webp in zip(QUALITIES, results["red-cars-hp"], results["webp"], strict=True)
    ]
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print("| quality | " + " | ".join(results) + " |")
    print("|---:|" + "---:|" * len(results))
    for index, quality in enumerate(QUALITIES):
        cells = [
            f"{row['ratio']:.2f}x" if "ratio" in row else f"{row['bytes']:,}"
            for row in (results[k][index] for k in results)
        ]
        print(f"| {quality} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
