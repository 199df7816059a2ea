"""The `latentz` command line as a newcomer meets it, run as a real process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import latentz
from latentz import bundle

REPO = Path(__file__).resolve().parents[1]


def run_latentz(
    *args: str, env: dict[str, str] | None = None, path_first: Path | None = None
) -> subprocess.CompletedProcess:
    """`python -m latentz ARGS` in a fresh interpreter, with this checkout's source first on the path
    (after ``path_first`` when given)."""
    environment = {**os.environ, **(env or {})}
    entries = [str(path_first)] if path_first else []
    entries += [str(REPO / "src"), environment.get("PYTHONPATH", "")]
    environment["PYTHONPATH"] = os.pathsep.join(entry for entry in entries if entry)
    return subprocess.run(
        [sys.executable, "-m", "latentz", *args], capture_output=True, text=True, env=environment
    )


def test_version_prints_the_version_and_succeeds() -> None:
    result = run_latentz("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"latentz {latentz.__version__}"
    assert "Missing command" not in result.stdout + result.stderr


# -- latentz models ---------------------------------------------------------------------------------
def _install_copy(source: Path, folder: Path, name: str) -> str:
    """A bundle as `latentz models` sees it (its config and card) under another name."""
    target = folder / name
    target.mkdir(parents=True)
    for file_name in (bundle.CONFIG_FILE, bundle.CARD_FILE):
        shutil.copy(source / file_name, target / file_name)
    return bundle.read_card(target)["fingerprint"][:8]


@pytest.mark.parametrize("width", [80, 60])
def test_models_never_cuts_names_or_fingerprints_and_says_where(tmp_path: Path, width: int) -> None:
    home, extra = tmp_path / "home", tmp_path / "my-models"
    cached = _install_copy(
        bundle.PACKAGED_BUNDLES / "mnist-z32", home / ".cache/latentz/models", "digits-cached"
    )
    mine = _install_copy(bundle.PACKAGED_BUNDLES / "red-cars-64", extra, "red-cars-64-retrained-by-me")
    result = run_latentz(
        "models", env={"COLUMNS": str(width), "HOME": str(home), "LATENTZ_MODELS": str(extra)}
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "…" not in out and "..." not in out
    words = out.split()
    for name in sorted(bundle.PACKAGED_BUNDLES.iterdir()):
        if bundle.is_bundle(name):
            assert name.name in words, f"{name.name} missing or cut at {width} columns:\n{out}"
            assert bundle.read_card(name)["fingerprint"][:8] in words
    assert {"digits-cached", cached, "red-cars-64-retrained-by-me", mine} <= set(words)
    assert "packaged" in words and "cache" in words
    assert str(extra) in out.replace("\n", "")
    # Without the long temporary folder, 80 columns hold one line per model.
    plain = run_latentz("models", env={"COLUMNS": str(width), "HOME": str(home), "LATENTZ_MODELS": ""})
    lines = plain.stdout.splitlines()
    assert plain.returncode == 0 and "…" not in plain.stdout and max(map(len, lines)) <= width
    if width == 80:
        red_car = next(line.split() for line in lines if line.startswith("red-cars-128 "))
        fingerprint = bundle.read_card(bundle.PACKAGED_BUNDLES / "red-cars-128")["fingerprint"][:8]
        assert red_car[:3] == ["red-cars-128", "packaged", fingerprint]
        assert next(line.split() for line in lines if line.startswith("digits-cached "))[1] == "cache"


# -- a base install without the training extra ---------------------------------------------------
def hide_module(folder: Path, name: str) -> Path:
    """A path entry whose `name` package fails to import as if it were not installed."""
    package = folder / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"raise ImportError(\"No module named '{name}'\", name={name!r})\n")
    return folder


def test_train_without_onnxscript_stops_before_the_first_epoch(tmp_path: Path, mnist_path: Path) -> None:
    out = tmp_path / "run"
    hidden = hide_module(tmp_path / "hidden", "onnxscript")
    result = run_latentz(
        "train", "--data", f"idx:{mnist_path}", "-o", str(out), "--limit", "64", "--epochs", "2",
        "--widths", "4,8", "--hidden", "16", "--latent-dim", "2",
        path_first=hidden,
    )  # fmt: skip
    said = result.stdout + result.stderr
    assert result.returncode == 2, said
    assert "onnxscript" in result.stderr and "pip install 'latentz[train]'" in result.stderr
    assert "Traceback" not in said and "epoch" not in said
    assert not out.exists(), "nothing is trained or written"


def test_eval_without_torch_says_how_to_install_it(tmp_path: Path) -> None:
    result = run_latentz("eval", "mnist-z10", "--json", path_first=hide_module(tmp_path / "hidden", "torch"))
    assert result.returncode == 2 and result.stdout == ""
    assert "torch" in result.stderr and "pip install 'latentz[train]'" in result.stderr
    assert "Traceback" not in result.stderr
