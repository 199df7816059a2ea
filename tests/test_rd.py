"""`latentz rd` against AVIF as well as WebP and JPEG, and a card's data path from any folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import features
from typer.testing import CliRunner

import latentz
from latentz import imaging, rd, runtime
from latentz.cli import app
from latentz.data import load_dataset

needs_avif = pytest.mark.skipif(not features.check("avif"), reason="this Pillow cannot write AVIF")


def run_latentz(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, in another folder, on the latentz under test."""
    source = str(Path(latentz.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "latentz", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@needs_avif
def test_rd_adds_avif_with_its_bd_rate_from_the_same_implementation(
    codec_bundles, mnist_path, tmp_path
) -> None:
    """AVIF is measured on the same digits as the rest, and its BD-rate is `rd.bd_rate` of its curve."""
    out = tmp_path / "rd"
    args = ["rd", str(codec_bundles[0]), "--data", f"idx:{mnist_path}", "--limit", "8"]
    result = CliRunner().invoke(app, [*args, "--qualities", "0,50,100", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary["codecs"]) == {"latentz", "webp", "avif", "jpeg"}
    assert set(summary["bd_rate_vs"]) == {"webp", "avif", "jpeg"}
    avif = json.loads((out / "avif.json").read_text())
    assert avif["name"] == "avif" and "speed 4" in avif["description"]
    # Each AVIF point is the mean size of the files encode_with writes for those digits.
    digits = load_dataset(f"idx:{mnist_path}", split="val", limit=8).images
    quality = avif["results"]["quality"][3]
    files = [imaging.encode_with(digit, "avif", quality) for digit in digits]
    assert avif["results"]["bytes"][3] == pytest.approx(np.mean([len(f) for f in files]))
    ours = json.loads((out / "latentz.json").read_text())["results"]
    expected = rd.bd_rate(avif["results"]["bytes"], avif["results"]["psnr"], ours["bytes"], ours["psnr"])
    assert summary["bd_rate_vs"]["avif"]["bd_rate_percent"] == expected
    assert summary["bd_rate_vs"]["avif"]["best_psnr_db"] == max(avif["results"]["psnr"])
    assert (out / "rd.png").is_file()


@needs_avif
def test_bd_rate_against_avif_on_a_shared_range() -> None:
    """The one BD-rate implementation, on an AVIF curve: a test curve at 80% of AVIF's bytes is -20%."""
    rows, cols = np.mgrid[0:48, 0:64]
    image = np.stack([rows * 5, cols * 4, (rows + cols) * 2], axis=-1).astype(np.uint8)
    image[::5] = 220
    points = rd.measure_classic(image[None], "avif", (10, 30, 50, 70, 90))
    rates, psnrs = [p.bytes for p in points], [p.psnr for p in points]
    assert rates == sorted(rates) and psnrs[-1] > psnrs[0]
    assert rd.bd_rate(rates, psnrs, [0.8 * r for r in rates], psnrs) == pytest.approx(-20.0)
    assert rd.bd_rate(rates, psnrs, [1.25 * r for r in rates], psnrs) == pytest.approx(25.0)


def test_own_size_needs_a_fully_convolutional_model(codec_bundles, mnist_path, tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["rd", str(codec_bundles[0]), "--data", f"idx:{mnist_path}", "--own-size", "-o", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "fixed-size model" in result.stderr and "--own-size needs a fully convolutional" in result.stderr


def test_the_readme_rd_command_works_from_another_folder(mnist_path, tmp_path) -> None:
    """`latentz rd mnist-z32` (its card says idx:../shared/data/...) run outside the checkout's root."""
    if not runtime.load("mnist-z32").info.card.get("data", "").startswith("idx:../"):
        pytest.skip("the bundled mnist-z32's card no longer names a relative path")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run_latentz(
        "rd", "mnist-z32", "--limit", "5", "--qualities", "30", "-o", "out", "--json", cwd=elsewhere
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["n_images"] == 5 and Path(summary["data"].removeprefix("idx:")).samefile(mnist_path)
    assert "from mnist-z32's card" in done.stderr and "found at" in done.stderr
    assert (elsewhere / "out" / "summary.json").is_file()


def _moved_bundle(source: Path, at: Path, data: str, out: str) -> Path:
    """A copy of a bundle whose card says it was trained on ``data`` with ``-o out``."""
    shutil.copytree(source, at)
    card_path = at / "card.json"
    card = json.loads(card_path.read_text())
    card["data"] = data
    card["command"] = ["latentz", "train", "--data", data, "-o", out]
    card_path.write_text(json.dumps(card))
    return at


def test_a_cards_relative_data_is_found_from_the_folder_training_ran_in(
    codec_bundles, mnist_path, tmp_path
) -> None:
    """Trained in project/ with `--data idx:data/digits.gz -o runs/digits`; rd run from somewhere else."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    shutil.copy(mnist_path, project / "data" / "digits.gz")
    bundle_dir = _moved_bundle(
        codec_bundles[0], project / "runs" / "digits", "idx:data/digits.gz", "runs/digits"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run_latentz("rd", str(bundle_dir), "--limit", "4", "--qualities", "50", "--json", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["data"] == f"idx:{(project / 'data' / 'digits.gz').resolve()}"


def test_a_cards_missing_data_says_it_came_from_the_card_and_that_data_exists(
    codec_bundles, tmp_path
) -> None:
    bundle_dir = _moved_bundle(
        codec_bundles[0], tmp_path / "runs" / "digits", "idx:../gone/digits.gz", "runs/digits"
    )
    done = run_latentz("rd", str(bundle_dir), "--limit", "4", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    message = done.stderr
    assert message.startswith("error: ../gone/digits.gz: no such file or folder")
    assert "comes from the card of digits" in message and "--data SPEC" in message


def test_without_avif_rd_says_so_and_measures_the_rest(
    codec_bundles, mnist_path, tmp_path, monkeypatch
) -> None:
    """A Pillow built without libavif: encode_with refuses AVIF by name, rd leaves it out and says why."""
    monkeypatch.setattr(imaging, "avif_available", lambda: False)
    with pytest.raises(imaging.ImageError, match="cannot write AVIF"):
        imaging.encode_with(np.zeros((8, 8, 3), dtype=np.uint8), "avif", 50)
    args = ["rd", str(codec_bundles[0]), "--data", f"idx:{mnist_path}", "--limit", "4", "--qualities", "50"]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "avif: not measured (this Pillow cannot write AVIF" in " ".join(result.stdout.split())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["codecs"]) == {"latentz", "webp", "jpeg"} and "avif" in summary["not_measured"]
    assert not (tmp_path / "avif.json").exists()
