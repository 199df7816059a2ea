"""Benchmark: peak memory of training's data path on photo folders of 1k, 10k and 50k images.

    .venv/bin/python bench/folder_memory.py [--sizes 1000,10000,50000] [--image-size 32]

For each folder size, generated 32x32 JPEGs (written once under /tmp, reused), three fresh
processes each load the run's train and validation splits exactly as `latentz train` does and then
read one epoch of shuffled batches (batch 128) and the validation set, as training and
validation would (no network: its memory does not depend on the folder):

- ``in-ram``: the old path, every photo decoded into one array (``load_training_data(lazy=False)``
  with no cache present);
- ``cache-build``: the memory-mapped folder cache, built on first use;
- ``cache-hit``: the same cache, opened again.

Each process reports its peak resident memory (VmHWM: anonymous plus mapped file pages), the
peak of its anonymous memory alone (sampled every 5 ms), both after importing torch and latentz
(the baseline every training process pays), and timings. Results go to
bench/results/folder_memory.json and a Markdown table is printed. Figures come from a shared
2-core machine: memory is exact, times are indicative.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "folder_memory.json"
PHOTO_ROOT = Path(tempfile.gettempdir()) / "latentz-bench-photos"
MODES = ("in-ram", "cache-build", "cache-hit")
BATCH = 128


def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def make_photos(count: int, size: int) -> Path:
    """``count`` small JPEGs (random gradients and noise, so each decodes to different pixels)."""
    import numpy as np
    from PIL import Image

    folder = PHOTO_ROOT / f"{count}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    rng = np.random.default_rng(count)
    ramp = np.linspace(0, 1, size)[None, :, None]
    for index in range(count):
        colour = rng.uniform(40, 255, size=3)
        pixels = ramp * colour + rng.normal(0, 12, size=(size, size, 3))
        path = folder / f"{index // 1000:03d}" / f"{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    done.write_text("")
    return folder


def child(mode: str, folder: Path, size: int) -> dict:
    """Runs in a fresh process: load as training does, read an epoch, report memory."""
    peak_anon = {"kib": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak_anon["kib"] = max(peak_anon["kib"], status_kib("RssAnon"))
            time.sleep(0.005)

    import torch

    from latentz.config import ModelConfig, TrainConfig
    from latentz.data import load_training_data
    from latentz.models import to_network
    from latentz.train.batches import images_at

    torch.set_num_threads(1)
    baseline = {"rss_kib": status_kib("VmRSS"), "anon_kib": status_kib("RssAnon")}
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    model = ModelConfig(arch="conv", image_size=size, channels=3, latent_dim=8, widths=[16, 32], hidden=64,
                        likelihood="gaussian")  # fmt: skip
    config = TrainConfig(data=f"folder:{folder}", model=model, batch_size=BATCH)
    started = time.perf_counter()
    data = load_training_data(config, lazy=mode != "in-ram")
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    checksum = 0.0
    for start in range(0, len(order), BATCH):
        checksum += float(to_network(images_at(data.train, order[start : start + BATCH])).mean())
    for start in range(0, len(data.val), 512):
        checksum += float(to_network(images_at(data.val, slice(start, start + 512))).mean())
    epoch_s = time.perf_counter() - started
    stop.set()
    sampler.join()
    return {
        "mode": mode,
        "images": len(data.train) + len(data.val),
        "baseline_rss_mb": baseline["rss_kib"] / 1024,
        "peak_rss_mb": status_kib("VmHWM") / 1024,
        "peak_anon_mb": max(peak_anon["kib"], status_kib("RssAnon")) / 1024,
        "peak_rss_above_baseline_mb": (status_kib("VmHWM") - baseline["rss_kib"]) / 1024,
        "peak_anon_above_baseline_mb": (max(peak_anon["kib"], status_kib("RssAnon")) - baseline["anon_kib"])
        / 1024,
        "load_s": round(load_s, 2),
        "epoch_read_s": round(epoch_s, 2),
        "checksum": checksum,
    }


def run_child(mode: str, folder: Path, size: int, cache: Path) -> dict:
    env = {**os.environ, "LATENTZ_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--child", mode, "--folder", str(folder), "--image-size", str(size)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--child", choices=MODES)
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.image_size)))
        return

    rows = []
    for count in (int(part) for part in args.sizes.split(",")):
        started = time.perf_counter()
        folder = make_photos(count, args.image_size)
        print(f"{count} photos ready in {folder} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="latentz-bench-cache-") as cache:
            for mode in MODES:
                row = {"photos": count, **run_child(mode, folder, args.image_size, Path(cache))}
                if mode == "cache-build":
                    row["cache_file_mb"] = sum(p.stat().st_size for p in Path(cache).glob("*.u8")) / 1e6
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
        checksums = {row["checksum"] for row in rows if row["photos"] == count}
        assert len(checksums) == 1, f"the three paths read different pixels: {checksums}"
    report = {
        "benchmark": "peak memory of training's data path on generated photo folders",
        "image_size": args.image_size,
        "batch": BATCH,
        "machine": f"{platform.machine()}, {os.cpu_count()} shared cores, Python {platform.python_version()}",
        "note": (
            "peak_rss = VmHWM (anonymous + file-backed pages); peak_anon sampled every 5 ms; "
            "baseline = after importing torch and latentz; each row is a fresh process"
        ),
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print("| photos | path | peak RSS MB | above baseline MB | peak anon above baseline MB | load s |")
    print("|---:|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['photos']:,} | {row['mode']} | {row['peak_rss_mb']:.0f} | "
            f"{row['peak_rss_above_baseline_mb']:.0f} | {row['peak_anon_above_baseline_mb']:.0f} | "
            f"{row['load_s']} |"
        )


if __name__ == "__main__":
    main()
