"""A server command run as a child process for the length of a with-block (the benchmarks' servers:
`latentz serve`, the reload-per-request baseline, nginx in front)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def any_answer(_response: httpx.Response) -> bool:
    return True


def answers_ok(response: httpx.Response) -> bool:
    return response.status_code == 200


@contextlib.contextmanager
def running(
    command: list[str],
    probe_url: str,
    *,
    name: str,
    start_timeout_s: float,
    stop_timeout_s: float = 30.0,
    ready: Callable[[httpx.Response], bool] = answers_ok,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command``, wait until ``probe_url`` gives a ``ready`` answer, yield the process, and
    stop it when the block ends (terminate, then kill if it lingers). A process that exits or stays
    silent past ``start_timeout_s`` raises with its stderr."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            with contextlib.suppress(httpx.TransportError):
                if ready(httpx.get(probe_url, timeout=5)):
                    break
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited: {process.stderr.read().decode()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer within {start_timeout_s:g} s")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
