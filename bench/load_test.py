"""Bounded load test of `latentz serve` on loopback: many requests, a realistic mix, zero 5xx, flat memory.

    nice -n 10 .venv/bin/python bench/load_test.py [--requests 20000] [--concurrency 64] [--workers 1]

The server runs as its own process (`latentz serve`, uploads capped at 1 MiB so "oversized" is
cheap to send); an asyncio httpx client keeps ``--concurrency`` requests in flight until
``--requests`` have been answered, drawing each from a fixed, seeded mix:

    encode           a real MNIST digit PNG -> .latentz                        expect 200
    decode           a real .latentz file -> PNG                               expect 200
    corrupt_image    a truncated PNG / a PNG whose pixel data is garbage       expect 400
    wrong_type       text, or a .latentz sent to encode, or a PNG to decode    expect 415
    oversized        a 1.2 MiB "PNG" (over the upload limit)                   expect 413
    corrupt_latentz  a .latentz file with a flipped byte or cut short          expect 400

A 429 (the server's back-pressure) is counted but not a failure; a 5xx or a transport error is.
Per kind: count, statuses, p50/p95/p99/max latency. The server's resident memory (VmRSS from
/proc, summed over its worker processes) is sampled throughout; the first ``--warmup`` requests
warm it up (thread pool, allocator arenas, caches) and are not in the latency figures. Memory
counts as flat when the RSS at the end is within ``--rss-tolerance`` (default 10%, at least
8 MiB) of the RSS right after warm-up.

Writes bench/results/load_test.json (``--out``); exits 1 on any 5xx, transport error,
unexpected status or memory growth. `tests/test_server_load.py` runs a small version in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_server import free_port, running

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
REAL_MNIST = REPO.parent / "shared" / "data" / "mnist" / "mnist9k-images-idx3-ubyte.gz"
UPLOAD_LIMIT_MB = 1.0

MIX: dict[str, tuple[float, frozenset[int]]] = {
    # kind: (share of requests, statuses that are correct answers)
    "encode": (0.40, frozenset({200})),
    "decode": (0.30, frozenset({200})),
    "corrupt_image": (0.08, frozenset({400})),
    "wrong_type": (0.08, frozenset({415})),
    "oversized": (0.04, frozenset({413})),
    "corrupt_latentz": (0.10, frozenset({400})),
}
BACK_PRESSURE = 429
"""Not wrong (the server sheds load as documented) but reported; none is expected at these settings."""


# -- the server process -------------------------------------------------------------------------------
@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]

    def pids(self) -> list[int]:
        """The server and its worker processes (uvicorn's supervisor forks them with --workers)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        found = [self.process.pid]
        with contextlib.suppress(OSError):
            found += [int(pid) for pid in children.read_text().split()]
        return found

    def rss_bytes(self) -> int:
        """Resident memory of the server and its workers (VmRSS, as /proc/PID/status reports it)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total


def _warmed_up(response: httpx.Response) -> bool:
    return response.status_code == 200 and bool(response.json().get("warmed_up"))


@contextlib.contextmanager
def latentz_serve(*extra: str, start_timeout_s: float = 120.0) -> Iterator[ServerProcess]:
    """`latentz serve` on a free loopback port until the block ends; yields once it answers and has
    finished its start-up work (so memory measured from then on is the steady state's)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "latentz",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra,
    ]
    url = f"http://127.0.0.1:{port}"
    with running(
        command,
        f"{url}/api/health",
        name="latentz serve",
        start_timeout_s=start_timeout_s,
        cwd=REPO,
        ready=_warmed_up,
    ) as process:
        yield ServerProcess(url, process)


# -- what is sent -------------------------------------------------------------------------------------
def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def real_digits(count: int) -> np.ndarray:
    """Real MNIST digits when the shared subset is present, else simple drawn rings and bars."""
    if REAL_MNIST.is_file():
        from latentz.data import read_idx

        return np.asarray(read_idx(REAL_MNIST)[:count])
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:28, 0:28]
    digits = []
    for index in range(count):
        radius = 4 + index % 6
        ring = np.abs(np.hypot(rows - 14, cols - 14) - radius) < 1.5
        digits.append(np.where(ring, 255 - rng.integers(0, 40, (28, 28)), 0).astype(np.uint8))
    return np.stack(digits)


@dataclass
class Payloads:
    """Every body the mix sends, made once (real digits, their real .latentz files, broken variants)."""

    model: str
    bodies: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)
    """kind -> [(path, file bytes)]"""

    @classmethod
    def build(cls, model: str, digits: int = 64) -> Payloads:
        from latentz import runtime

        loaded = runtime.load(model)
        pngs = [_png(digit) for digit in real_digits(digits)]
        files = [
            loaded.compress(loaded.prepare(png).image, quality=(25 * i) % 101) for i, png in enumerate(pngs)
        ]
        encode, decode = f"/api/models/{model}/encode", "/api/decode"
        rng = random.Random(1)

        def flipped(data: bytes) -> bytes:
            at = rng.randrange(3, len(data))  # past magic and version: the checksum must catch it
            return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]

        garbage_pixels = pngs[0][:33] + bytes(rng.randrange(256) for _ in range(300))  # valid header only
        oversized = b"\x89PNG\r\n\x1a\n" + bytes(int(UPLOAD_LIMIT_MB * 1024 * 1024 * 1.2))
        payloads = cls(model)
        payloads.bodies = {
            "encode": [(encode, png) for png in pngs],
            "decode": [(decode, blob) for blob in files],
            "corrupt_image": [(encode, png[: len(png) // 2]) for png in pngs[:8]]
            + [(encode, garbage_pixels)],
            "wrong_type": [
                (encode, b"just some text, not an image\n" * 4),
                (encode, files[0]),
                (decode, pngs[0]),
            ],
            "oversized": [(encode, oversized)],
            "corrupt_latentz": [(decode, flipped(blob)) for blob in files[:16]]
            + [(decode, blob[: len(blob) // 2]) for blob in files[:4]],
        }
        return payloads


def schedule(requests: int, seed: int = 0) -> list[str]:
    """The kinds of ``requests`` requests in a fixed, shuffled order with the mix's proportions."""
    kinds: list[str] = []
    for kind, (share, _) in MIX.items():
        kinds += [kind] * round(requests * share)
    kinds = (kinds + ["encode"] * requests)[:requests]
    random.Random(seed).shuffle(kinds)
    return kinds


# -- the load ------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    kind: str
    status: int  # 0: a transport error
    latency_s: float
    error: str = ""


async def run_load(url: str, payloads: Payloads, kinds: list[str], concurrency: int) -> list[Outcome]:
    """Send every request of ``kinds`` with ``concurrency`` in flight; one outcome per request, in order."""
    outcomes: list[Outcome | None] = [None] * len(kinds)
    picks = random.Random(2)
    bodies = [picks.choice(payloads.bodies[kind]) for kind in kinds]
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(kinds):
                index = next_index
                next_index += 1
                path, data = bodies[index]
                started = time.perf_counter()
                try:
                    response = await client.post(path, files={"file": ("upload", data)})
                    await response.aread()
                    outcome = Outcome(kinds[index], response.status_code, time.perf_counter() - started)
                except httpx.HTTPError as error:
                    outcome = Outcome(kinds[index], 0, time.perf_counter() - started, repr(error))
                outcomes[index] = outcome

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [outcome for outcome in outcomes if outcome is not None]


class MemorySampler:
    """Samples the server's RSS every ``interval_s`` in a thread, labelled by phase."""

    def __init__(self, server: ServerProcess, interval_s: float = 0.25) -> None:
        self.server = server
        self.interval_s = interval_s
        self.phase = "start"
        self.samples: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> int:
        rss = self.server.rss_bytes()
        self.samples.append((time.monotonic() - self._started, self.phase, rss))
        return rss

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def percentile_ms(latencies: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(latencies), q)) * 1000, 2) if latencies else float("nan")


def summarise(outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    """Per kind and overall: counts, statuses, latency percentiles, 5xx and wrong answers."""
    per_kind: dict[str, Any] = {}
    for kind in MIX:
        mine = [o for o in outcomes if o.kind == kind]
        if not mine:
            continue
        latencies = [o.latency_s for o in mine]
        per_kind[kind] = {
            "requests": len(mine),
            "statuses": dict(sorted(Counter(str(o.status) for o in mine).items())),
            "p50_ms": percentile_ms(latencies, 50),
            "p95_ms": percentile_ms(latencies, 95),
            "p99_ms": percentile_ms(latencies, 99),
            "max_ms": round(max(latencies) * 1000, 2),
        }
    all_latencies = [o.latency_s for o in outcomes]
    unexpected = [
        o for o in outcomes if o.status not in MIX[o.kind][1] and o.status != BACK_PRESSURE and o.status < 500
    ]
    return {
        "requests": len(outcomes),
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(outcomes) / seconds, 1) if seconds else None,
        "p50_ms": percentile_ms(all_latencies, 50),
        "p99_ms": percentile_ms(all_latencies, 99),
        "server_errors_5xx": sum(o.status >= 500 for o in outcomes),
        "transport_errors": sum(o.status == 0 for o in outcomes),
        "busy_429": sum(o.status == BACK_PRESSURE for o in outcomes),
        "unexpected_statuses": len(unexpected),
        "first_problems": [
            f"{o.kind}: {o.status} {o.error}".strip() for o in outcomes if o.status >= 500 or o.status == 0
        ][:5]
        + [f"{o.kind}: unexpected {o.status}" for o in unexpected][:5],
        "per_kind": per_kind,
    }


def memory_report(
    samples: list[tuple[float, str, int]], tolerance: float, floor_mib: float
) -> dict[str, Any]:
    """RSS at the start, after warm-up, halfway, at the end and at most; whether it stayed flat."""
    mib = 1024 * 1024

    def last_of(phase: str) -> int:
        return [rss for _, p, rss in samples if p == phase][-1]

    measured = [rss for _, phase, rss in samples if phase == "measure"]
    after_warmup = last_of("warmup")
    end = last_of("end")
    allowed = max(after_warmup * tolerance, floor_mib * mib)
    return {
        "rss_start_mib": round(samples[0][2] / mib, 1),
        "rss_after_warmup_mib": round(after_warmup / mib, 1),
        "rss_middle_mib": round(measured[len(measured) // 2] / mib, 1) if measured else None,
        "rss_end_mib": round(end / mib, 1),
        "rss_max_mib": round(max(rss for _, _, rss in samples) / mib, 1),
        "growth_after_warmup_mib": round((end - after_warmup) / mib, 1),
        "criterion": f"end RSS <= RSS after warm-up + max({tolerance:.0%} of it, {floor_mib:g} MiB)",
        "allowed_growth_mib": round(allowed / mib, 1),
        "flat": end - after_warmup <= allowed,
        "samples": len(samples),
    }


def run_test(
    server: ServerProcess,
    model: str,
    requests: int,
    concurrency: int,
    warmup: int,
    rss_tolerance: float = 0.10,
    rss_floor_mib: float = 8.0,
) -> dict[str, Any]:
    """Warm up, then the measured load, with memory sampled throughout; the whole report."""
    payloads = Payloads.build(model)
    kinds = schedule(warmup + requests)
    with MemorySampler(server) as memory:
        memory.phase = "warmup"
        warm = asyncio.run(run_load(server.url, payloads, kinds[:warmup], concurrency)) if warmup else []
        memory.sample()
        memory.phase = "measure"
        started = time.perf_counter()
        outcomes = asyncio.run(run_load(server.url, payloads, kinds[warmup:], concurrency))
        seconds = time.perf_counter() - started
        memory.phase = "end"
        time.sleep(0.5)  # let the last responses' buffers go
        memory.sample()
    report = summarise(outcomes, seconds)
    report["warmup"] = {
        "requests": len(warm),
        "server_errors_5xx": sum(o.status >= 500 for o in warm),
        "transport_errors": sum(o.status == 0 for o in warm),
    }
    report["memory"] = memory_report(memory.samples, rss_tolerance, rss_floor_mib)
    report["passed"] = (
        report["server_errors_5xx"] == 0
        and report["transport_errors"] == 0
        and report["unexpected_statuses"] == 0
        and report["warmup"]["server_errors_5xx"] == 0
        and report["memory"]["flat"]
    )
    return report


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"{report['requests']:,} requests at concurrency {settings['concurrency']} "
        f"({settings['workers']} worker(s), model {settings['model']}), after {settings['warmup']:,} warm-up "
        f"requests: {report['requests_per_s']} req/s, 5xx: {report['server_errors_5xx']}, transport errors: "
        f"{report['transport_errors']}, 429: {report['busy_429']}.",
        "",
        "| kind | requests | statuses | p50 | p95 | p99 | max |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for kind, row in report["per_kind"].items():
        statuses = ", ".join(f"{status}: {count}" for status, count in row["statuses"].items())
        lines.append(
            f"| {kind} | {row['requests']:,} | {statuses} | {row['p50_ms']} ms | {row['p95_ms']} ms "
            f"| {row['p99_ms']} ms | {row['max_ms']} ms |"
        )
    memory = report["memory"]
    lines += [
        "",
        f"Server RSS: {memory['rss_start_mib']} MiB at start, "
        f"{memory['rss_after_warmup_mib']} MiB after warm-up, "
        f"{memory['rss_middle_mib']} MiB halfway, {memory['rss_end_mib']} MiB at the end (max "
        f"{memory['rss_max_mib']} MiB); {memory['criterion']}: {'flat' if memory['flat'] else 'GREW'}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2_000, help="requests before memory and latency count")
    parser.add_argument("--workers", type=int, default=1, help="latentz serve --workers")
    parser.add_argument("--jobs", type=int, default=0, help="latentz serve --jobs (0: its default)")
    parser.add_argument("--model", default="mnist-z10")
    parser.add_argument("--rss-tolerance", type=float, default=0.10)
    parser.add_argument("--out", type=Path, default=RESULTS / "load_test.json")
    args = parser.parse_args()

    extra = [
        "--max-upload-mb",
        str(UPLOAD_LIMIT_MB),
        "--workers",
        str(args.workers),
        "--jobs",
        str(args.jobs),
    ]
    with latentz_serve(*extra) as server:
        jobs = httpx.get(f"{server.url}/api/health").json()["limits"]["max_concurrent_jobs"]
        report = run_test(
            server, args.model, args.requests, args.concurrency, args.warmup, args.rss_tolerance
        )
    report["settings"] = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "workers": args.workers,
        "jobs_per_worker": jobs,
        "model": args.model,
        "mix": {kind: share for kind, (share, _) in MIX.items()},
        "upload_limit_mib": UPLOAD_LIMIT_MB,
    }
    report["machine"] = {
        "cpus": os.cpu_count(),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "note": "2 cores shared with other engineers' training jobs; the load generator ran on them too",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"\nwritten: {args.out}")
    if not report["passed"]:
        print(
            "FAILED: " + "; ".join(report["first_problems"])
            if report["first_problems"]
            else "FAILED: memory grew"
        )
        raise SystemExit(1)


if __name__ == "__main__":
    main()
