"""Benchmark the web app in one run: browser decoding, and the server against a reload-per-request baseline.

    .venv/bin/python bench/bench_web.py [--model mnist-z10] [--duration 6] [--moves 300]

1. Browser. Headless Chromium opens the explorer on a live `latentz serve`, then moves the most
   active latent slider ``--moves`` times (a new value each time, like a drag) and waits for each
   repaint. Per move it records the time in ``decoder.run`` (WebAssembly, onnxruntime-web), the time
   from the start of decoding to the painted canvas, and the time from the input event to the
   paint (which includes waiting for the next animation frame).
2. Server. `latentz serve` (sessions loaded once, shared by threads) and bench/baseline_server.py
   (the model reloaded on every request, as the original backend did) each run as their own
   process on loopback, side by side; an asyncio httpx client keeps 1, 8 and 32 requests in
   flight for ``--duration`` seconds per case and server, in ``--rounds`` slices that alternate
   between the two servers (so drifting load from other work hits both alike), against encode
   (a 28x28 PNG digit -> .latentz) and decode (.latentz -> PNG). Throughput, median and p99
   latency, and the ratios latentz / baseline, all from this one run; plus `GET /api/health` on
   latentz, the HTTP stack's own ceiling at that moment, to tell model work from machine load.

Writes bench/results/web.json and bench/results/web.md (the Markdown table the README shows).
The machine is shared (2 cores; the load generator runs on it too): compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO / "tests"))
from chromium import launch  # noqa: E402  (tests/chromium.py: the one home of the launch flags)
from local_server import any_answer, free_port, running  # noqa: E402  (bench/local_server.py)


@contextmanager
def server_process(command: list[str], port: int, name: str) -> Iterator[str]:
    """Run a server command until the block ends; yields its base URL once it answers."""
    url = f"http://127.0.0.1:{port}"
    # Any answer will do: the baseline server has no health route.
    with running(
        command,
        f"{url}/openapi.json",
        name=name,
        start_timeout_s=120,
        stop_timeout_s=20,
        ready=any_answer,
        cwd=REPO,
    ):
        yield url


def pick_model(requested: str | None) -> str:
    from latentz.bundle import DECODER_FILE, list_bundles, read_bundle

    names = [p.name for p in list_bundles() if (p / DECODER_FILE).is_file()]
    if requested:
        if requested not in names:
            raise SystemExit(f"model {requested!r} is not installed and exported (installed: {names})")
        return requested
    vector = [n for n in names if not read_bundle(n).config.fully_convolutional]
    for preferred in ("mnist-z10", *[n for n in vector if "mnist" in n and "fashion" not in n], *vector):
        if preferred in vector:
            return preferred
    raise SystemExit("no installed, exported vector-latent model to benchmark")


def payloads(model: str) -> tuple[bytes, bytes]:
    """A 28x28 PNG digit (what the explorer's users send) and its .latentz file."""
    from latentz import runtime
    from latentz.data import read_idx

    mnist = REPO.parent / "shared" / "data" / "mnist" / "mnist9k-images-idx3-ubyte.gz"
    if mnist.is_file():
        digit = read_idx(mnist)[0]
    else:
        rows, cols = np.mgrid[0:28, 0:28]
        digit = np.where(np.abs(np.hypot(rows - 14, cols - 14) - 7) < 1.5, 255, 0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, format="PNG")
    png = buffer.getvalue()
    loaded = runtime.load(model)
    return png, loaded.compress(loaded.prepare(png).image, quality=75)


# -- server load --------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def hammer(
    url: str, op: str, model: str, png: bytes, blob: bytes, concurrency: int, duration: float, warmup: float
) -> dict[str, Any]:
    """Keep ``concurrency`` requests in flight for ``duration`` seconds after ``warmup``; raw latencies."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:

        async def one() -> float:
            started = time.perf_counter()
            if op == "encode":
                response = await client.post(
                    f"/api/models/{model}/encode", files={"file": ("digit.png", png)}, data={"quality": "75"}
                )
            elif op == "health":
                response = await client.get("/api/health")
            else:
                response = await client.post("/api/decode", files={"file": ("digit.latentz", blob)})
            if response.status_code != 200:
                key = str(response.status_code)
                errors[key] = errors.get(key, 0) + 1
            return time.perf_counter() - started

        async def worker(until: float, record: bool) -> None:
            while time.perf_counter() < until:
                elapsed = await one()
                if record:
                    latencies.append(elapsed)

        await asyncio.gather(*(worker(time.perf_counter() + warmup, False) for _ in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + duration, True) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"latencies_s": latencies, "seconds": wall, "errors": errors}


def combine(segments: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """Pool interleaved segments of one case into throughput and latency figures."""
    ms = [1000 * value for segment in segments for value in segment["latencies_s"]]
    seconds = sum(segment["seconds"] for segment in segments)
    errors: dict[str, int] = {}
    for segment in segments:
        for key, count in segment["errors"].items():
            errors[key] = errors.get(key, 0) + count
    return {
        "concurrency": concurrency,
        "requests": len(ms),
        "seconds": seconds,
        "requests_per_s": len(ms) / seconds,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "errors": errors,
    }


def bench_servers(
    model: str, levels: list[int], duration: float, warmup: float, rounds: int
) -> dict[str, Any]:
    """Both servers run side by side; each case alternates between them (A B B A ...) in ``rounds``
    slices, so load from other work on the machine drifts over both alike."""
    png, blob = payloads(model)
    commands = {
        "latentz": [sys.executable, "-m", "latentz", "serve", "--log-level", "warning", "--port"],
        "baseline": [
            sys.executable, "-m", "uvicorn", "--app-dir", "bench", "baseline_server:app",
            "--log-level", "warning", "--port",
        ],
    }  # fmt: skip
    results: dict[str, Any] = {name: {} for name in commands}
    ports = {name: free_port() for name in commands}
    with (
        server_process([*commands["latentz"], str(ports["latentz"])], ports["latentz"], "latentz") as ours,
        server_process(
            [*commands["baseline"], str(ports["baseline"])], ports["baseline"], "baseline"
        ) as base,
    ):
        urls = {"latentz": ours, "baseline": base}
        # health: no model work at all, the HTTP stack's own ceiling on this machine at that moment
        for op in ("encode", "decode", "health"):
            names = ["latentz", "baseline"] if op != "health" else ["latentz"]
            for level in levels:
                segments: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
                for round_index in range(rounds):
                    order = names if round_index % 2 == 0 else names[::-1]
                    for name in order:
                        segment = hammer(urls[name], op, model, png, blob, level, duration / rounds, warmup)
                        segments[name].append(asyncio.run(segment))
                for name in names:
                    outcome = results[name].setdefault(op, {})[str(level)] = combine(segments[name], level)
                    rate, p50, p99 = outcome["requests_per_s"], outcome["p50_ms"], outcome["p99_ms"]
                    print(
                        f"{name:8s} {op:6s} c={level:<3d} {rate:8.1f} req/s  p50 {p50:8.1f} ms  "
                        f"p99 {p99:8.1f} ms  errors {outcome['errors']}",
                        flush=True,
                    )
    results["payload_bytes"] = {"png": len(png), "latentz": len(blob)}
    return results


# -- browser ------------------------------------------------------------------------------------------
MOVE_SCRIPT = """async (moves) => {
  const s = window.latentzExplorer;
  const kl = s.model.card.latent_stats.kl;
  const k = kl.indexOf(Math.max(...kl));
  const slider = document.getElementById(`z-${k}`);
  const min = Number(slider.min), max = Number(slider.max);
  const painted = () => new Promise((resolve) => {
    const check = () => (!s.dirty && !s.busy && s.renderedLatent && s.renderedLatent[k] === s.latent[k])
      ? resolve() : requestAnimationFrame(check);
    check();
  });
  await painted();
  const decode = [], frame = [], inputToPaint = [];
  for (let i = 0; i < moves; i++) {
    slider.value = String(min + ((max - min) * ((i * 37) % 100)) / 100);
    const started = performance.now();
    slider.dispatchEvent(new Event("input", { bubbles: true }));
    await painted();
    inputToPaint.push(performance.now() - started);
    decode.push(s.decodeTimes.at(-1));
    frame.push(s.frameTimes.at(-1));
  }
  return { decode, frame, inputToPaint, isolated: crossOriginIsolated, dimension: k };
}"""


def summarise(values: list[float]) -> dict[str, float]:
    return {"median_ms": percentile(values, 50), "p95_ms": percentile(values, 95), "max_ms": max(values)}


def bench_browser(model: str, moves: int, threads: list[int]) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    port = free_port()
    command = [sys.executable, "-m", "latentz", "serve", "--log-level", "warning", "--port", str(port)]
    results: dict[str, Any] = {"moves": moves}
    with server_process(command, port, "latentz") as url, sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            results["chromium"] = browser.version
            for count in threads:
                page = browser.new_page()
                page.goto(f"{url}/explorer?threads={count}#model={model}")
                page.wait_for_selector("body[data-ready=true]", timeout=120_000)
                raw = page.evaluate(MOVE_SCRIPT, moves)
                page.close()
                entry = {
                    "decoder_run": summarise(raw["decode"]),
                    "decode_and_paint": summarise(raw["frame"]),
                    "input_to_paint": summarise(raw["inputToPaint"]),
                    "cross_origin_isolated": raw["isolated"],
                    "slider_dimension": raw["dimension"],
                }
                results[f"threads_{count}"] = entry
                run, frame, latency = entry["decoder_run"], entry["decode_and_paint"], entry["input_to_paint"]
                print(
                    f"browser threads={count}: decoder.run median {run['median_ms']:.3f} ms, "
                    f"p95 {run['p95_ms']:.3f} ms; decode+paint median {frame['median_ms']:.3f} ms; "
                    f"input->paint median {latency['median_ms']:.2f} ms",
                    flush=True,
                )
        finally:
            browser.close()
    return results


# -- report -------------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    lines = []
    browser = report.get("browser")
    if browser:
        lines += [
            f"In-browser decoding, {report['model']}, {browser['moves']} slider moves, Chromium "
            f"{browser['chromium']} headless, onnxruntime-web (WASM SIMD):",
            "",
            "| ORT threads | decoder.run median | p95 | decode + paint median | p95 | input → paint median |",
            "|---|---|---|---|---|---|",
        ]
        for key, entry in browser.items():
            if not key.startswith("threads_"):
                continue
            run, frame, latency = entry["decoder_run"], entry["decode_and_paint"], entry["input_to_paint"]
            lines.append(
                f"| {key.removeprefix('threads_')} | {run['median_ms']:.3f} ms | {run['p95_ms']:.3f} ms | "
                f"{frame['median_ms']:.3f} ms | {frame['p95_ms']:.3f} ms | {latency['median_ms']:.2f} ms |"
            )
        lines.append("")
    servers = report.get("server")
    if servers:
        lines += [
            f"Server, {report['model']}: `latentz serve` (sessions loaded once) vs a baseline that "
            f"reloads the model on every request; {report['settings']['duration_s']:g} s per case:",
            "",
            "| endpoint | in flight | latentz req/s | baseline req/s | × "
            "| latentz p99 | baseline p99 | p99 ÷ |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for op in ("encode", "decode"):
            for level, ours in servers["latentz"][op].items():
                base = servers["baseline"][op][level]
                lines.append(
                    f"| {op} | {level} | {ours['requests_per_s']:.0f} | {base['requests_per_s']:.1f} | "
                    f"{ours['requests_per_s'] / base['requests_per_s']:.1f}× | {ours['p99_ms']:.1f} ms | "
                    f"{base['p99_ms']:.0f} ms | {base['p99_ms'] / ours['p99_ms']:.1f}× |"
                )
        floor = servers["latentz"].get("health")
        if floor:
            rates = ", ".join(f"{level}: {entry['requests_per_s']:.0f}" for level, entry in floor.items())
            lines += [
                "",
                f"For scale, the same server's `GET /api/health` (no model work) in the same run, req/s by "
                f"requests in flight: {rates}.",
            ]
        lines.append("")
    machine = report["machine"]
    lines.append(
        f"Machine: {machine['cpus']} CPUs shared with other work (load average "
        f"{machine['load_start']:.1f} at the start, {machine['load_end']:.1f} at the end); "
        "the load generator ran on the same cores."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="bundle to use (default: mnist-z10 or the first vector model)")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per case and server")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each slice")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved slices per case and server")
    parser.add_argument("--concurrency", default="1,8,32", help="requests in flight, comma-separated")
    parser.add_argument("--moves", type=int, default=300, help="slider moves in the browser")
    parser.add_argument("--threads", default="1,2", help="onnxruntime-web thread counts to try")
    parser.add_argument("--skip-browser", action="store_true")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for web.json and web.md")
    args = parser.parse_args()

    model = pick_model(args.model)
    import onnxruntime

    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": model,
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "concurrency": [int(c) for c in args.concurrency.split(",")],
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "load_start": os.getloadavg()[0],
        },
    }
    if not args.skip_browser:
        report["browser"] = bench_browser(model, args.moves, [int(t) for t in args.threads.split(",")])
    if not args.skip_server:
        report["server"] = bench_servers(
            model, report["settings"]["concurrency"], args.duration, args.warmup, args.rounds
        )
        report["ratios"] = {
            op: {
                level: {
                    "throughput": ours["requests_per_s"]
                    / report["server"]["baseline"][op][level]["requests_per_s"],
                    "p99_speedup": report["server"]["baseline"][op][level]["p99_ms"] / ours["p99_ms"],
                }
                for level, ours in report["server"]["latentz"][op].items()
            }
            for op in ("encode", "decode")
        }
    report["machine"]["load_end"] = os.getloadavg()[0]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "web.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.results / "web.md").write_text(table)
    print()
    print(table)


if __name__ == "__main__":
    main()
