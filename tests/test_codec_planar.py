"""Format version 3: the planar payload of the rate-distortion codec (`latentz.codec.planar`), which
makes flat images and gradients nearly free. Unit tests of the integer path, then the shipped
bundle against WebP on a flat grey image at every quality (issue 12: at most twice WebP's file),
photos never switched to it, and hostile version-3 files (damaged ones are fuzzed beside version
2's in tests/test_codec_v2.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from latentz import bundle, codec, imaging, metrics, runtime
from latentz.codec import hyper, planar
from latentz.codec.integer_network import HyperCodecError
from latentz.codec.limits import TooLargeError
from latentz.data.folders import load_photos
from latentz.hyper_runtime import HyperpriorRuntime

MODEL = "red-cars-hp"
CARS = Path(__file__).resolve().parents[2] / "shared" / "data" / "red-cars"
QUALITIES = tuple(range(0, 101, 10))
TABLES = hyper.build_gaussian_tables()


@pytest.fixture(scope="module")
def model() -> HyperpriorRuntime:
    loaded = runtime.load(bundle.PACKAGED_BUNDLES / MODEL)
    assert isinstance(loaded, HyperpriorRuntime)
    return loaded


symbols_arrays = hnp.arrays(
    np.int64,
    st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6)),
    elements=st.integers(-3000, 3000),
)


@settings(max_examples=80, deadline=None)
@given(symbols=symbols_arrays)
def test_residuals_integrate_back_exactly_and_the_payload_round_trips(symbols: np.ndarray) -> None:
    residual = planar.residuals(symbols)
    np.testing.assert_array_equal(planar.integrate(residual), symbols)
    payload = planar.encode(symbols, TABLES)
    np.testing.assert_array_equal(planar.decode(payload, symbols.shape, TABLES), symbols)


@settings(max_examples=60, deadline=None)
@given(symbols=symbols_arrays)
def test_the_entropy_bound_never_exceeds_what_the_payload_costs(symbols: np.ndarray) -> None:
    """The encoder skips the planar payload when this bound alone beats version 2: it must be a bound."""
    residual = planar.residuals(symbols)
    bound = planar.entropy_bound_bits(residual)
    assert bound <= planar.estimated_bits(residual, TABLES)[1] + 1e-6
    assert bound / 8 <= len(planar.encode(symbols, TABLES))


def test_a_plane_leaves_residuals_only_on_its_first_row_and_column() -> None:
    rows, cols = np.meshgrid(np.arange(9), np.arange(13), indexing="ij")
    plane = np.stack([3 * rows - 2 * cols + 7, np.full_like(rows, -5)])
    residual = planar.residuals(plane)
    assert not residual[:, 1:, 1:].any()
    table, bits = planar.estimated_bits(residual, TABLES)
    payload = planar.encode(plane, TABLES)
    assert payload[0] == table and len(payload) <= bits / 8 + 3


def test_the_estimate_matches_the_real_payload() -> None:
    rng = np.random.default_rng(0)
    symbols = np.cumsum(rng.integers(-2, 3, size=(8, 10, 12)), axis=2)
    _, bits = planar.estimated_bits(planar.residuals(symbols), TABLES)
    assert abs(len(planar.encode(symbols, TABLES)) - 1 - bits / 8) <= 3


@pytest.mark.parametrize("payload", [b"", bytes([64]), bytes([255, 1, 2, 3])])
def test_a_payload_without_a_usable_table_byte_is_refused(payload: bytes) -> None:
    with pytest.raises(HyperCodecError, match=r"table|empty"):
        planar.decode(payload, (2, 3, 4), TABLES)


def test_flat_grey_costs_at_most_twice_webp_at_every_quality(model) -> None:
    """Issue 12's target on an empty wall: a flat grey 300x200 image at every quality of ours and
    WebP's (WebP: 160 to 190 bytes), and still a faithful image. The planar payload has no mean,
    so the grey is as exact as the quality's step: 29.7 dB at quality 0 with the shipped bundle
    (30.5 dB with the one before), up to 48.9 dB."""
    grey = np.full((200, 300, 3), 128, np.uint8)
    for quality in QUALITIES:
        data = model.compress(grey, quality=quality)
        webp = imaging.encode_with(grey, "webp", quality)
        assert codec.unpack(data)[0].version == codec.VERSION_PLANAR
        assert len(data) <= 2 * len(webp), (quality, len(data), len(webp))
        assert metrics.psnr(grey, model.decompress(data)) > 29


def test_a_gradient_is_cheap_too(model) -> None:
    ramp = np.tile(np.linspace(0, 255, 300).astype(np.uint8)[None, :, None], (200, 1, 3))
    hyperprior = model.coder.encode  # what version 2 alone would spend
    images = model._check_images(ramp)
    y, z = model.encode(images)
    v2_bytes = len(hyperprior(y[0], np.floor(z[0] + 0.5).astype(np.int64), 50))
    data = model.compress(ramp, quality=50)
    assert codec.unpack(data)[0].version == codec.VERSION_PLANAR
    assert len(data) < v2_bytes / 2
    assert metrics.psnr(ramp, model.decompress(data)) > 30


def test_photos_keep_the_hyperprior_payload(model) -> None:
    photos, _ = load_photos(CARS, "val", 0.1, 0, limit=6)
    for photo in photos:
        for quality in (0, 50, 100):
            assert codec.unpack(model.compress(photo, quality=quality))[0].version == 2


def test_a_v3_file_with_huge_residuals_decodes_to_an_image(model) -> None:
    """Residuals at the escape code's limit integrate to enormous latents: still an image, no crash."""
    shape = model.config.latent_shape(40, 56)
    extreme = np.full(shape, hyper.MAX_SYMBOL // 2, np.int64)
    payload = planar.encode(planar.integrate(extreme), model.coder.gaussian)
    header = codec.Header(version=3, quality=50, fingerprint=bytes.fromhex(model.fingerprint)[:4],
                          entropy_id=model.coder.entropy_id, height=40, width=56, channels=3,
                          latent_shape=shape)  # fmt: skip
    decoded = model.decompress(codec.pack(header, payload))
    assert decoded.shape == (40, 56, 3) and decoded.dtype == np.uint8


def test_a_v3_file_declaring_a_huge_image_is_refused_from_its_header(model) -> None:
    header = codec.Header(version=3, quality=50, fingerprint=bytes.fromhex(model.fingerprint)[:4],
                          entropy_id=model.coder.entropy_id, height=3000, width=3000, channels=3,
                          latent_shape=(96, 375, 375))  # fmt: skip
    with pytest.raises(TooLargeError, match="3000x3000"):
        model.decompress(codec.pack(header, bytes([0]) + b"\x00" * 8))


def test_a_v3_file_for_a_v1_model_is_a_mismatch(model) -> None:
    grey = np.full((64, 64, 3), 128, np.uint8)
    data = model.compress(grey, quality=50)
    with pytest.raises(codec.ModelMismatchError):
        runtime.load("red-cars-64").decompress(data)
