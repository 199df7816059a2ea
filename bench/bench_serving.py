"""Serving set-ups compared: 1 vs 2 `latentz serve` workers, reached directly or through nginx.

    nice -n 10 .venv/bin/python bench/bench_serving.py [--requests 2000] [--concurrency 32] [--rounds 2]

Needs nginx (``apt-get install nginx``; never needed by the tests). Each set-up gets the load
test's mix (bench/load_test.py: encodes, decodes and bad uploads) from one asyncio client:

    direct, 1 worker    latentz serve --workers 1              (2 inference jobs)
    direct, 2 workers   latentz serve --workers 2              (1 inference job each)
    nginx,  1 worker    nginx (bench/nginx_latentz.conf) -> latentz serve --workers 1
    nginx,  2 workers   nginx -> latentz serve --workers 2

All four servers run side by side for the whole benchmark; ``--rounds`` slices of ``--requests``
requests go to them in ABBA order (1 2 3 4 4 3 2 1 ...), so drifting load from other work on
the shared machine hits every set-up alike. Writes bench/results/serving.json and serving.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load_test  # bench/load_test.py: the mix, the client and the summaries
from local_server import free_port, running

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
NGINX_SITE = BENCH / "nginx_latentz.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_config(prefix: Path, listen_port: int, upstream_port: int) -> str:
    """A whole nginx.conf around bench/nginx_latentz.conf, with every path under ``prefix``."""
    site = (
        NGINX_SITE.read_text()
        .replace("{{UPSTREAM_PORT}}", str(upstream_port))
        .replace("{{LISTEN}}", f"127.0.0.1:{listen_port}")
        .replace("{{MAX_BODY}}", f"{round((load_test.UPLOAD_LIMIT_MB + 0.1) * 1024)}k")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes auto;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        + "".join(
            f"  {kind}_temp_path {prefix}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + "  access_log off;\n"
        f"{site}\n}}\n"
    )


@contextlib.contextmanager
def nginx_in_front(upstream_url: str) -> Iterator[str]:
    """nginx proxying to ``upstream_url`` on a free port until the block ends; yields its URL."""
    upstream_port = int(upstream_url.rsplit(":", 1)[1])
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="latentz-nginx-") as folder:
        prefix = Path(folder)
        (prefix / "nginx.conf").write_text(nginx_config(prefix, port, upstream_port))
        command = [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
        url = f"http://127.0.0.1:{port}"
        with running(command, f"{url}/api/health", name="nginx", start_timeout_s=30):
            yield url


def check_proxy(url: str) -> dict[str, Any]:
    """What a client sees through the proxy: the isolation headers once each, and JSON 413s."""
    response = httpx.get(f"{url}/codec", timeout=30)
    headers = {name: response.headers.get_list(name) for name in ("cross-origin-opener-policy",)}
    headers["cross-origin-embedder-policy"] = response.headers.get_list("cross-origin-embedder-policy")
    huge = b"\x89PNG\r\n\x1a\n" + bytes(3 * 1024 * 1024)
    too_large = httpx.post(f"{url}/api/models/mnist-z10/encode", files={"file": ("x", huge)}, timeout=30)
    return {
        "page_status": response.status_code,
        "isolation_headers": headers,
        "far_over_limit_status": too_large.status_code,
        "far_over_limit_body": too_large.json(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2_000, help="requests per slice")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="ABBA slices per set-up")
    parser.add_argument("--model", default="mnist-z10")
    parser.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    args = parser.parse_args()
    if not Path(NGINX).exists():
        raise SystemExit(
            "nginx is not installed (apt-get install nginx); it is needed for this benchmark only"
        )

    payloads = load_test.Payloads.build(args.model)
    limit = ["--max-upload-mb", str(load_test.UPLOAD_LIMIT_MB)]
    outcomes: dict[str, list[load_test.Outcome]] = {}
    seconds: dict[str, float] = {}
    with (
        load_test.latentz_serve(*limit, "--workers", "1") as one,
        load_test.latentz_serve(*limit, "--workers", "2") as two,
        nginx_in_front(one.url) as proxy_one,
        nginx_in_front(two.url) as proxy_two,
    ):
        setups = {
            "direct, 1 worker": one.url,
            "direct, 2 workers": two.url,
            "nginx, 1 worker": proxy_one,
            "nginx, 2 workers": proxy_two,
        }
        jobs = {
            "1 worker": httpx.get(f"{one.url}/api/health").json()["limits"]["max_concurrent_jobs"],
            "2 workers": httpx.get(f"{two.url}/api/health").json()["limits"]["max_concurrent_jobs"],
        }
        proxy_checks = check_proxy(proxy_two)
        for url in setups.values():  # warm-up: sessions, thread pools, connections
            asyncio.run(load_test.run_load(url, payloads, load_test.schedule(300, seed=99), args.concurrency))
        order = list(setups)
        for round_index in range(args.rounds):
            for name in order if round_index % 2 == 0 else order[::-1]:
                kinds = load_test.schedule(args.requests, seed=round_index)
                started = time.perf_counter()
                result = asyncio.run(load_test.run_load(setups[name], payloads, kinds, args.concurrency))
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
                outcomes.setdefault(name, []).extend(result)
    report: dict[str, Any] = {
        "settings": {
            "requests_per_slice": args.requests,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "model": args.model,
            "inference_jobs_per_worker": jobs,
            "nginx": subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip(),
            "nginx_config": "bench/nginx_latentz.conf (worker_processes auto)",
        },
        "proxy_checks": proxy_checks,
        "setups": {name: load_test.summarise(outcomes[name], seconds[name]) for name in outcomes},
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "note": "2 cores shared with other engineers' training; client, nginx and servers all on them",
        },
    }
    table = markdown(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    if any(row["server_errors_5xx"] or row["transport_errors"] for row in report["setups"].values()):
        raise SystemExit(1)


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"{settings['rounds']} x {settings['requests_per_slice']:,} requests per set-up (load test mix), "
        f"{settings['concurrency']} in flight, {settings['model']}; {settings['nginx']}:",
        "",
        "| set-up | req/s | p50 | p99 | encode p99 | decode p99 | 5xx | 429 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["setups"].items():
        kinds = row["per_kind"]
        lines.append(
            f"| {name} | {row['requests_per_s']} | {row['p50_ms']} ms | {row['p99_ms']} ms "
            f"| {kinds['encode']['p99_ms']} ms | {kinds['decode']['p99_ms']} ms "
            f"| {row['server_errors_5xx']} | {row['busy_429']} |"
        )
    machine = report["machine"]
    lines += [
        "",
        f"Machine: {machine['cpus']} CPUs shared with other work "
        f"(load average {machine['load_average_after'][0]} "
        "at the end); the client, nginx and the servers all ran on them.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
