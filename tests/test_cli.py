"""The `latentz` command line as a newcomer meets it, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import latentz

REPO = Path(__file__).resolve().parents[1]


def run_latentz(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`python -m latentz ARGS` in a fresh interpreter, with this checkout's source first on the path."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO / "src"), environment.get("PYTHONPATH", "")) if part
    )
    return subprocess.run(
        [sys.executable, "-m", "latentz", *args], capture_output=True, text=True, env=environment, cwd=cwd
    )


def test_version_prints_the_version_and_succeeds() -> None:
    result = run_latentz("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"latentz {latentz.__version__}"
    assert "Missing command" not in result.stdout + result.stderr
