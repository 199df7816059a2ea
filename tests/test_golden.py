"""Golden files pin the bitstream: the same image and quality must give the same bytes, and a
committed file must decode to the same symbols and latent, on every machine and every commit.

Regenerate deliberately with `scripts/make_golden.py` (the diff then shows the bitstream change).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from latentz import bundle, codec, imaging, metrics, runtime
from latentz.codec import entropy

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(GOLDEN.glob("*-q*.json"))


def installed(name: str) -> runtime.ModelRuntime:
    if not (bundle.PACKAGED_BUNDLES / name / bundle.CARD_FILE).is_file():
        pytest.fail(f"bundled model {name} is missing from {bundle.PACKAGED_BUNDLES}")
    return runtime.load(bundle.PACKAGED_BUNDLES / name)


def test_golden_cases_exist() -> None:
    assert {json.loads(p.read_text())["model"] for p in CASES} >= {"mnist-z10", "mnist-z32", "red-cars-64"}


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_a_fixed_image_and_quality_give_the_pinned_file(case: Path) -> None:
    expected = json.loads(case.read_text())
    model = installed(expected["model"])
    assert model.fingerprint == expected["fingerprint"], (
        "the bundle was retrained: regenerate the golden files"
    )
    image = imaging.load_array(GOLDEN / expected["image"], None, model.config.channels)
    data = model.compress(image, quality=expected["quality"])
    assert len(data) == expected["file_bytes"]
    assert hashlib.sha256(data).hexdigest() == expected["file_sha256"]
    assert data == case.with_suffix(".latentz").read_bytes()


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_the_committed_file_decodes_to_the_pinned_symbols_and_latent(case: Path) -> None:
    expected = json.loads(case.read_text())
    model = installed(expected["model"])
    data = case.with_suffix(".latentz").read_bytes()
    header, payload = codec.unpack(data)
    assert header.step == expected["step"]
    symbols = entropy.decode_symbols(model.entropy, payload, header.latent_shape, header.step)
    assert np.asarray(symbols).ravel().tolist() == expected["symbols"]
    _, latent = model.read(data)
    np.testing.assert_array_equal(latent.ravel(), np.asarray(expected["latent"], dtype=np.float32))
    # Pixels come from the decoder network, the one part allowed to differ in the last bits.
    decoded = model.decompress(data).astype(int)
    pinned = imaging.load_array(case.with_suffix(".png"), None, model.config.channels).astype(int)
    assert np.abs(decoded - pinned).max() <= 2


def sample_image(config) -> np.ndarray:
    """A digit for grey 28x28 models; otherwise a synthetic scene at the model's size: a colour
    gradient, a dark disc and a white bar, so colours, true black and true white are all present."""
    if config.channels == 1 and config.image_size == 28:
        return imaging.load_array(GOLDEN / "digit.png", None, 1)
    size = config.image_size
    rows, cols = np.mgrid[0:size, 0:size] / size
    scene = np.stack([0.8 * cols, 0.3 + 0.4 * rows, 0.9 - 0.6 * cols], axis=-1)
    scene[(rows - 0.6) ** 2 + (cols - 0.4) ** 2 < 0.05] = 0.02
    scene[(rows > 0.15) & (rows < 0.25) & (cols > 0.5)] = 1.0
    image = np.round(scene * 255).astype(np.uint8)
    return image if config.channels == 3 else image[:, :, :1]


@pytest.mark.parametrize("path", bundle.list_bundles(), ids=lambda p: p.name)
def test_every_installed_bundle_round_trips(path: Path) -> None:
    """Encode then decode an image with every installed model, through the bytes of a file."""
    model = runtime.load(path)
    image = model.prepare(sample_image(model.config)).image
    for quality in (0, 75, 100):
        data = model.compress(image, quality=quality)
        decoded = model.decompress(data)
        assert decoded.shape == image.shape
        np.testing.assert_array_equal(decoded, model.decode(model.read(data)[1][None])[0])
    reference = model.reconstruct(image)[0]
    assert metrics.psnr(reference[None], decoded[None]) > 25  # quality 100 is close to the unquantised decode
