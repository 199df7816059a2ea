"""`latentz serve` as its own process: a small load test with bad uploads mixed in, and several workers.

The load generator is bench/load_test.py (the full run, 20,000 requests at concurrency 64, is
`make bench`); here 1,000 requests at concurrency 16 after 300 warm-up requests. Asserted:
no 5xx, no transport error, every request answered with its kind's documented status, and the
server's resident memory after the run within 10% (at least 8 MiB) of its RSS after warm-up.
No assertion on speed: the machine is shared.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from types import ModuleType

import httpx
from conftest import REPO


def _load_test_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("load_test", REPO / "bench" / "load_test.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


load_test = _load_test_module()


def test_mixed_load_has_no_server_errors_and_flat_memory(web_model: str) -> None:
    extra = ["--max-upload-mb", str(load_test.UPLOAD_LIMIT_MB), "--jobs", "2"]
    with load_test.latentz_serve(*extra) as server:
        report = load_test.run_test(server, web_model, requests=1_000, concurrency=16, warmup=300)
        assert server.process.poll() is None  # still serving
    problems = report["first_problems"]
    assert report["server_errors_5xx"] == 0, problems
    assert report["transport_errors"] == 0, problems
    assert report["unexpected_statuses"] == 0, problems
    assert report["warmup"]["server_errors_5xx"] == report["warmup"]["transport_errors"] == 0
    for kind, (_, expected) in load_test.MIX.items():
        statuses = {int(status) for status in report["per_kind"][kind]["statuses"]}
        assert statuses <= expected | {load_test.BACK_PRESSURE}, (kind, statuses)
    memory = report["memory"]
    assert memory["flat"], memory
    assert report["passed"]


def test_several_workers_share_the_port_and_the_command_line_limits(web_model: str) -> None:
    options = ["--workers", "2", "--jobs", "3", "--max-upload-mb", "2", "--header-timeout", "7"]
    options += ["--allowed-host", "latentz.test", "--allow-origin", "https://app.example"]
    with load_test.latentz_serve(*options) as server:
        assert len(server.pids()) >= 3  # uvicorn's supervisor and its two workers
        answered_by: Counter[str] = Counter()
        for _ in range(400):  # a new connection each time; the kernel hands them to either worker
            health = httpx.get(f"{server.url}/api/health", timeout=30).json()
            answered_by[health["worker"]] += 1
            assert health["limits"]["max_concurrent_jobs"] == 3
            assert health["limits"]["max_upload_bytes"] == 2 * 1024 * 1024
            assert health["limits"]["header_timeout_s"] == 7
            if len(answered_by) == 2:
                break
        assert len(answered_by) == 2, answered_by
        for _ in range(20):  # the cross-site options reach both workers (any one would fail some)
            named = httpx.get(f"{server.url}/api/health", headers={"Host": "latentz.test"}, timeout=30)
            assert named.status_code == 200
            assert httpx.get(f"{server.url}/api/health", headers={"Host": "other.test"}).status_code == 421
            allowed = {"Origin": "https://app.example", "Sec-Fetch-Site": "cross-site"}
            assert (
                httpx.get(f"{server.url}/api/models/{web_model}/sample", headers=allowed).status_code == 200
            )
            other = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
            assert httpx.get(f"{server.url}/api/models/{web_model}/sample", headers=other).status_code == 403


def test_a_bad_allow_origin_is_refused_at_start() -> None:
    import subprocess

    command = [sys.executable, "-m", "latentz", "serve", "--allow-origin", "app.example", "--port", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode != 0
    assert "--allow-origin" in done.stderr and "https://app.example.org" in done.stderr
    command = [sys.executable, "-m", "latentz", "serve", "--allowed-host", "https://x.example", "--port", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode != 0
    assert "--allowed-host" in done.stderr and "not a host name" in done.stderr


def test_default_jobs_share_the_cores_between_workers() -> None:
    from latentz.commands.serve import default_jobs

    assert default_jobs(1) >= 2
    assert default_jobs(2) == max(1, default_jobs(1) // 2)
    assert default_jobs(64) == 1
