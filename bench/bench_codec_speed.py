"""Benchmark: encode and decode time per image of the photo codecs against WebP and AVIF, one core.

    .venv/bin/python bench/bench_codec_speed.py [--images 16] [--repeats 7] [--quality 50] [--quick]

On held-out red cars (the bundles' own validation split, photos they never trained on), at 128x128
(centre-cropped and resized, as `latentz rd` measures) and at each photo's own size (about
210x140), this times in one process and one run:

- ``red-cars-64``, ``red-cars-128`` and ``red-cars-hp`` (format v2) through the torch-free runtime
  (`latentz.runtime`), as the
  CLI and the server run them: encode is uint8 pixels -> ONNX encoder -> quantise -> range-code ->
  a whole ``.latentz`` file; decode is the file -> checks and range-decode -> ONNX decoder ->
  uint8 pixels (cropped back at own size);
- WebP (Pillow, method 6) and AVIF (Pillow's libavif, AOM, speed 4) through
  `imaging.encode_with` and `imaging.load_array`, the baselines `latentz rd` uses: pixels -> file
  and file -> pixels.

Everything runs on one core: ONNX Runtime with one intra-op thread (the runtime's default), AVIF
encode and decode with one thread; WebP, the range coder, numpy's element-wise work and the integer
hyper-decoder's BLAS products (the runtime limits BLAS to one thread around them) are
single-threaded. Each codec first codes every image once (warm-up: sessions load, caches fill);
then each repeat times a pass over all the images, and the figure is the median over repeats of
(pass time / images), in CPU time of the process (the work runs in one thread, so this is its cost
on one core, and other users of a shared machine barely move it) and in wall time. Every codec
codes the same images at the same ``--quality`` (0..100 in its own scale); bytes and PSNR are
recorded so the times can be read against what they buy. Ratios are against WebP measured in the
same run. Results go to bench/results/codec_speed.json (``--quick``: a smaller run written under
/tmp) and a Markdown table (CPU times) is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from latentz import imaging, metrics, runtime
from latentz.bundle import training_val_fraction
from latentz.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
RED_CARS = REPO.parent / "shared" / "data" / "red-cars"
RESULTS = REPO / "bench" / "results" / "codec_speed.json"
QUICK_RESULTS = Path("/tmp/latentz-bench-quick/codec_speed.json")
MODELS = ("red-cars-64", "red-cars-128", "red-cars-hp")
CLASSICS = ("webp", "avif")
SQUARE = 128


def one_core() -> None:
    """AVIF's decoder otherwise uses every core (its encoder is given one thread by encode_with)."""
    from PIL import AvifImagePlugin

    AvifImagePlugin.DEFAULT_MAX_THREADS = 1


def held_out(count: int) -> dict[str, list[np.ndarray]]:
    """The first ``count`` held-out cars at 128x128 and, the same files, each at its own size."""
    model = runtime.load(MODELS[0])
    square = load_dataset(
        f"folder:{RED_CARS}",
        split="val",
        image_size=SQUARE,
        channels=3,
        val_fraction=training_val_fraction(model.info.path),
        limit=count,
    )
    own = [imaging.load_array(path, None, 3) for path in square.files]
    return {f"{SQUARE}x{SQUARE}": list(square.images), "own size": own}


def per_image_ms(work: Callable[[], object], images: int, repeats: int) -> tuple[float, float]:
    """Median over ``repeats`` passes of one pass's time divided by the images it coded: CPU time of
    this process (what the work costs on one core, whoever else uses the machine) and wall time."""
    cpu, wall = [], []
    for _ in range(repeats):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        work()
        cpu.append((time.process_time() - cpu_start) / images * 1000)
        wall.append((time.perf_counter() - wall_start) / images * 1000)
    return statistics.median(cpu), statistics.median(wall)


def time_codec(
    encode: Callable[[np.ndarray], bytes],
    decode: Callable[[bytes], np.ndarray],
    images: Sequence[np.ndarray],
    repeats: int,
) -> dict[str, float]:
    files = [encode(image) for image in images]  # warm-up, and the files decode times use
    decoded = [decode(data) for data in files]
    psnr = float(np.mean([metrics.psnr(a, b) for a, b in zip(images, decoded, strict=True)]))
    encode_cpu, encode_wall = per_image_ms(lambda: [encode(image) for image in images], len(images), repeats)
    decode_cpu, decode_wall = per_image_ms(lambda: [decode(data) for data in files], len(images), repeats)
    return {
        "encode_ms": encode_cpu,
        "decode_ms": decode_cpu,
        "encode_wall_ms": encode_wall,
        "decode_wall_ms": decode_wall,
        "bytes": float(np.mean([len(data) for data in files])),
        "psnr_db": psnr,
    }


def versions() -> dict[str, str]:
    import onnxruntime
    import PIL
    from PIL import features

    return {
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "pillow": PIL.__version__,
        "libwebp": str(features.version("webp")),
        "libavif": str(features.version("avif")),
    }


def run(count: int, repeats: int, quality: int) -> dict:
    one_core()
    sets = held_out(count)
    rows = []
    for size, images in sets.items():
        shapes = sorted({image.shape[:2] for image in images})
        print(f"{size}: {len(images)} images, {len(shapes)} shape(s)", file=sys.stderr, flush=True)
        timed: dict[str, dict[str, float]] = {}
        for fmt in CLASSICS:
            timed[fmt] = time_codec(
                lambda image, fmt=fmt: imaging.encode_with(image, fmt, quality),
                lambda data: imaging.decode_baseline(data, 3),
                images,
                repeats,
            )
        for name in MODELS:
            model = runtime.load(name, threads=1)
            timed[name] = time_codec(
                lambda image, model=model: model.compress(image, quality=quality),
                model.decompress,
                images,
                repeats,
            )
        webp = timed["webp"]
        for codec, figures in timed.items():
            rows.append(
                {
                    "size": size,
                    "codec": codec,
                    **figures,
                    "encode_vs_webp": figures["encode_ms"] / webp["encode_ms"],
                    "decode_vs_webp": figures["decode_ms"] / webp["decode_ms"],
                }
            )
    return {
        "benchmark": "encode and decode time per image, one core, held-out red cars",
        "machine": f"{platform.machine()}, {os.cpu_count()} shared cores",
        "versions": versions(),
        "settings": {
            "images": count,
            "repeats": repeats,
            "quality": quality,
            "threads": 1,
            "webp": "Pillow, method 6",
            "avif": f"Pillow's libavif, AOM, speed {imaging.AVIF_SPEED}, 4:2:0, one thread",
            "latentz": "latentz.runtime: ONNX Runtime CPU, 1 intra-op thread; whole .latentz files",
        },
        "note": (
            "median over repeats of (time of one pass over the images / images); encode_ms/decode_ms "
            "are this process's CPU time (one thread does the work, so it is the cost on one core), "
            "*_wall_ms the wall time (inflated when others use the shared machine); encode = uint8 "
            "pixels to file bytes, decode = file bytes to uint8 pixels; the same images and quality "
            "for every codec; *_vs_webp = this codec's CPU time / WebP's in the same run"
        ),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        "| size | codec | encode ms | decode ms | encode / WebP | decode / WebP | bytes | PSNR dB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['size']} | {row['codec']} | {row['encode_ms']:.2f} | {row['decode_ms']:.2f} | "
            f"{row['encode_vs_webp']:.1f}x | {row['decode_vs_webp']:.1f}x | {row['bytes']:,.0f} | "
            f"{row['psnr_db']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=16, help="held-out cars to code (default 16)")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per codec (median; default 7)")
    parser.add_argument("--quality", type=int, default=50, help="every codec's quality 0..100 (default 50)")
    parser.add_argument("--quick", action="store_true", help="4 images, 3 repeats, results under /tmp")
    parser.add_argument("--out", type=Path, default=None, help=f"results file (default {RESULTS})")
    args = parser.parse_args()
    if not RED_CARS.is_dir():
        raise SystemExit(f"the red-car photos are not at {RED_CARS}")
    if not imaging.avif_available():
        raise SystemExit("this Pillow cannot write AVIF (PIL.features.check('avif') is False)")
    count, repeats = (4, 3) if args.quick else (args.images, args.repeats)
    result = run(count, repeats, args.quality)
    out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
