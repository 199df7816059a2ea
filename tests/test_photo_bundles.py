"""The shipped red-car codecs on the held-out cars they never saw: the photo issue's acceptance.

Measured through the torch-free runtime, as a receiver would run them, on the bundle's own
validation split (the card names it). Skips where the red-car photos are not beside the checkout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from latentz import imaging, metrics, rd, runtime
from latentz.cli import app
from latentz.data import ImageSet, load_bundle_split

RED_CARS = Path(__file__).resolve().parents[2] / "shared" / "data" / "red-cars"


@pytest.fixture(scope="module")
def red_cars() -> Path:
    if not RED_CARS.is_dir():
        pytest.skip(f"red-car photos not found at {RED_CARS}")
    return RED_CARS


def held_out(model: runtime.ModelRuntime, folder: Path) -> ImageSet:
    """The bundle's validation split (the photos it never saw) at its training size."""
    images = load_bundle_split(
        model.info.path, f"folder:{folder}", "val", image_size=model.config.image_size, channels=3
    )
    assert len(images) == model.info.card["n_val"]
    return images


def rd_against_webp(name: str, folder: Path) -> tuple[list[rd.RDPoint], float | None]:
    model = runtime.load(name)
    images = held_out(model, folder).images
    ours = rd.measure_latentz(model, images)
    webp = rd.measure_classic(images, "webp")
    return ours, rd.bd_rate(
        [p.bytes for p in webp], [p.psnr for p in webp], [p.bytes for p in ours], [p.psnr for p in ours]
    )


def test_red_cars_64_files_are_a_third_smaller_than_webp_and_reach_25_db(red_cars: Path) -> None:
    ours, bd = rd_against_webp("red-cars-64", red_cars)
    assert max(p.psnr for p in ours) >= 25.0
    assert bd is not None and bd <= -30.0, f"BD-rate vs WebP {bd}"


def test_red_cars_128_is_compared_with_webp_over_a_shared_range(red_cars: Path) -> None:
    ours, bd = rd_against_webp("red-cars-128", red_cars)
    assert max(p.psnr for p in ours) >= 25.0
    assert bd is not None and bd < 0, f"BD-rate vs WebP {bd}"


def test_reconstructions_keep_blacks_whites_and_the_red(red_cars: Path) -> None:
    """At the README's pair quality the tone range and the car's colour survive the codec."""
    model = runtime.load("red-cars-64")
    images = held_out(model, red_cars).images
    decoded = np.stack([model.decompress(model.compress(image, quality=50)) for image in images])
    luma = np.array([0.299, 0.587, 0.114])
    lum_o, lum_d = images @ luma, decoded @ luma
    for q in (1, 99):  # the dark and bright ends of each image, averaged
        original = np.percentile(lum_o, q, axis=(1, 2)).mean()
        assert abs(np.percentile(lum_d, q, axis=(1, 2)).mean() - original) < 12, q
    assert (lum_d < 16).mean() > 0.5 * (lum_o < 16).mean()  # true blacks are still there
    car = images[..., 0].astype(int) - images[..., 1:].max(-1) > 60  # clearly red pixels
    for channel in range(3):
        assert abs(decoded[..., channel][car].mean() - images[..., channel][car].mean()) < 8, channel


def test_a_full_size_photo_is_coded_at_its_own_size(red_cars: Path, tmp_path: Path) -> None:
    """Beyond 128x128: the fully convolutional model codes a whole photo, aspect ratio and all."""
    model = runtime.load("red-cars-128")
    photo = held_out(model, red_cars).files[0]
    original = imaging.load_array(photo.read_bytes(), None, 3)
    height, width = original.shape[:2]
    assert height != width
    runner = CliRunner()
    packed, out = tmp_path / "car.latentz", tmp_path / "car.png"
    result = runner.invoke(app, ["encode", str(photo), "-m", "red-cars-128", "-o", str(packed)])
    assert result.exit_code == 0, result.output
    assert f"{width}x{height}" in result.output
    assert runner.invoke(app, ["decode", str(packed), "-o", str(out)]).exit_code == 0
    decoded = imaging.load_array(out.read_bytes(), None, 3)
    assert decoded.shape == original.shape
    assert metrics.psnr(original[None], decoded[None]) > 22.0
    assert model.read(packed.read_bytes())[0].height == height
