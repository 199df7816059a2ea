"""Run every benchmark in bench/ one after another (what `make bench` does).

    .venv/bin/python bench/run_all.py [--quick] [--only NAME,...] [--skip NAME,...] [--list]

Each benchmark runs as its own process at lower priority (nice 10: the machine is shared), with
the options that produce the figures in bench/results/ and the docs. ``--quick`` runs small
versions instead (a smoke test of the scripts: minutes, not the better part of an hour; their
results are written under /tmp, never over bench/results/; scripts that cannot write elsewhere
are skipped). Benchmarks whose requirements are missing (nginx for the proxy comparison, the
real MNIST subset for training) say so and are skipped; the run ends with a summary and exits 1
if any failed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
QUICK_RESULTS = Path("/tmp/latentz-bench-quick")


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    full: list[str] = field(default_factory=list)
    quick: list[str] | None = None
    """Options of the small version, or None: the script always writes bench/results/, so --quick skips it."""
    needs: str = ""
    """A file that must exist (e.g. /usr/sbin/nginx), or "" for none."""
    what: str = ""


BENCHMARKS = [
    Benchmark(
        "web",
        "bench_web.py",
        quick=[
            *("--duration", "1", "--rounds", "1", "--moves", "30", "--concurrency", "1,8"),
            *("--results", str(QUICK_RESULTS)),
        ],
        what="browser decode per slider move; server vs reload-per-request baseline (web.json, web.md)",
    ),
    Benchmark(
        "first-visit",
        "bench_first_visit.py",
        quick=["--results", str(QUICK_RESULTS)],
        what="bytes a first and a repeat visit download: explorer, receiver, /docs (first_visit.json)",
    ),
    Benchmark(
        "lean-models",
        "lean_models.py",
        quick=["--limit", "100", "--results", str(QUICK_RESULTS)],
        what="the browser's int8/float16 networks vs the bundles' on held-out images (lean_models.json)",
    ),
    Benchmark(
        "load",
        "load_test.py",
        full=["--requests", "20000", "--concurrency", "64", "--warmup", "2000"],
        quick=[
            "--requests",
            "1000",
            "--concurrency",
            "16",
            "--warmup",
            "200",
            "--out",
            f"{QUICK_RESULTS}/load.json",
        ],
        what="20,000 mixed requests at concurrency 64: 5xx, p99 per kind, RSS (load_test.json)",
    ),
    Benchmark(
        "serving",
        "bench_serving.py",
        quick=["--requests", "600", "--out", f"{QUICK_RESULTS}/serving.json"],
        needs="/usr/sbin/nginx",
        what="1 vs 2 workers, direct vs behind nginx (serving.json, serving.md)",
    ),
    Benchmark(
        "folder-memory",
        "folder_memory.py",
        what="training data path memory at 1k/10k/50k photos (folder_memory.json)",
    ),
    Benchmark(
        "codec-speed",
        "bench_codec_speed.py",
        quick=["--quick", "--out", f"{QUICK_RESULTS}/codec_speed.json"],
        needs=str(REPO.parent / "shared" / "data" / "red-cars"),
        what="encode/decode ms per image, one core: red-cars-64/128 vs WebP and AVIF (codec_speed.json)",
    ),
    Benchmark(
        "train-vs-examples",
        "train_vs_examples.py",
        needs=str(REPO.parent / "shared" / "data" / "mnist" / "mnist9k-images-idx3-ubyte.gz"),
        what="latentz's MNIST recipe vs the PyTorch examples VAE at equal time (train_vs_examples.json)",
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small versions, results under /tmp")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--skip", default="", help="comma-separated benchmark names")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args()

    names = {benchmark.name for benchmark in BENCHMARKS}
    only = {name for name in args.only.split(",") if name}
    skip = {name for name in args.skip.split(",") if name}
    if unknown := (only | skip) - names:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; there are {sorted(names)}")
    if args.list:
        for benchmark in BENCHMARKS:
            print(f"{benchmark.name:18} bench/{benchmark.script}: {benchmark.what}")
        return

    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    QUICK_RESULTS.mkdir(parents=True, exist_ok=True)
    outcomes: list[tuple[str, str, float]] = []
    for benchmark in BENCHMARKS:
        if (only and benchmark.name not in only) or benchmark.name in skip:
            continue
        if benchmark.needs and not Path(benchmark.needs).exists():
            outcomes.append((benchmark.name, f"skipped: {benchmark.needs} is missing", 0.0))
            continue
        if args.quick and benchmark.quick is None:
            outcomes.append((benchmark.name, "skipped in --quick: it always writes bench/results/", 0.0))
            continue
        options = (benchmark.quick or []) if args.quick else benchmark.full
        command = [*nice, sys.executable, str(BENCH / benchmark.script), *options]
        print(f"\n=== {benchmark.name}: {' '.join(command)}", flush=True)
        started = time.monotonic()
        done = subprocess.run(command, cwd=REPO)
        seconds = time.monotonic() - started
        outcomes.append(
            (benchmark.name, "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})", seconds)
        )

    print("\n=== summary")
    for name, outcome, seconds in outcomes:
        print(f"{name:18} {outcome}" + (f" ({seconds:.0f} s)" if seconds else ""))
    if any(outcome.startswith("FAILED") for _, outcome, _ in outcomes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
