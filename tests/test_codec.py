"""The .latentz container and the integer entropy models: round trips, sizes, and hostile input."""

from __future__ import annotations

import binascii
import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentz import codec
from latentz.codec import entropy as entropy_module
from latentz.codec import format as fmt

FINGERPRINT = "0123456789abcdef" * 4


def digit_header(**changes: object) -> codec.Header:
    fields: dict = {
        "fingerprint": bytes.fromhex(FINGERPRINT)[:4],
        "entropy_id": 7,
        "height": 28,
        "width": 28,
        "channels": 1,
        "latent_shape": (10,),
        "step": 6,
    }
    fields.update(changes)
    return codec.Header(**fields)


def fitted_model(channels: int = 10, n: int = 2000, seed: int = 0) -> codec.EntropyModel:
    """An entropy model fitted to VAE-like posteriors: a few active channels, the rest near the prior."""
    rng = np.random.default_rng(seed)
    active = np.arange(channels) < channels // 2
    means = np.where(active, rng.normal(0, 1, (n, channels)), rng.normal(0, 0.05, (n, channels)))
    stds = np.where(active, 0.1, 0.98) * np.ones((n, channels))
    return codec.fit(means, stds)


@pytest.fixture(scope="module")
def model() -> codec.EntropyModel:
    return fitted_model()


def valid_file(model: codec.EntropyModel, seed: int = 0, step: int = 6) -> bytes:
    latent = np.random.default_rng(seed).normal(0, 1, model.channels).astype(np.float32)
    return codec.encode_latent(
        latent, entropy=model, step=step, fingerprint=FINGERPRINT, height=28, width=28, channels=1
    )


def with_checksum(body: bytes) -> bytes:
    return body + binascii.crc_hqx(body, 0).to_bytes(2, "big")


# -- the container --------------------------------------------------------------------------------
def test_header_round_trips_and_is_small() -> None:
    header = digit_header()
    data = fmt.pack(header, b"payload")
    parsed, payload = fmt.unpack(data)
    assert parsed == header and payload == b"payload"
    assert fmt.header_bytes(header) == 15  # the spec's figure for a 28x28 digit with a 10-d latent
    spatial = digit_header(height=137, width=209, channels=3, latent_shape=(64, 9, 14), step=1000)
    assert fmt.unpack(fmt.pack(spatial, b""))[0] == spatial


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", codec.BadMagicError, "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, codec.BadMagicError, "magic bytes 'LZ'"),
        (with_checksum(b"LZ\x07" + b"\0" * 20), codec.UnsupportedVersionError, "version 7"),
        (b"LZ\x01\0\0", codec.TruncatedFileError, "shorter than the smallest header"),
    ],
)
def test_each_kind_of_bad_file_has_its_own_message(data: bytes, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        fmt.unpack(data)


def test_a_flipped_version_bit_is_damage_not_another_version() -> None:
    """The checksum is judged first: one flipped bit in the version byte reads 'damaged'."""
    data = bytearray(fmt.pack(digit_header(), b"\x12\x34\x56"))
    data[2] ^= 0x02
    with pytest.raises(codec.ChecksumError, match="damaged"):
        fmt.unpack(bytes(data))


def test_a_flipped_bit_fails_the_checksum() -> None:
    data = bytearray(fmt.pack(digit_header(), b"\x12\x34\x56"))
    data[10] ^= 0x04
    with pytest.raises(codec.ChecksumError, match="checksum mismatch"):
        fmt.unpack(bytes(data))


def test_a_file_cut_short_is_refused() -> None:
    data = fmt.pack(digit_header(), b"\x12\x34\x56\x78")
    for length in range(len(data)):
        with pytest.raises(codec.LatentzFormatError):
            fmt.unpack(data[:length])


def test_oversized_files_are_refused_before_parsing() -> None:
    with pytest.raises(codec.LatentzFormatError, match="more than the"):
        fmt.unpack(b"LZ\x01" + bytes(fmt.MAX_FILE_BYTES))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"LZ\x01" + b"\0" * 5 + b"\x1c\x1c\x11\x0a\x00", "step 0"),  # step must be >= 1
        (b"LZ\x01" + b"\0" * 5 + b"\x1c\x1c\x21\x0a\x06", "channels must be 1 or 3"),
        (b"LZ\x01" + b"\0" * 5 + b"\x1c\x1c\x13\x0a\x06", "ends inside the latent shape"),
        (b"LZ\x01" + b"\0" * 5 + b"\xff\xff\xff\xff\xff\x1c", "longer than 5 bytes"),
        (b"LZ\x01" + b"\0" * 5 + b"\x00\x1c\x11\x0a\x06", "image size 0x28"),
        (b"LZ\x01" + b"\0" * 5 + b"\x1c\x1c\x14\x0a\x06", "latent rank 4"),
        (b"LZ\x01" + b"\0" * 5 + b"\xff\xff\x03\xff\xff\x03\x11\x01\x01", "exceeds the 67,108,864-pixel"),
    ],
)
def test_checksummed_but_invalid_headers_name_the_field(body: bytes, message: str) -> None:
    with pytest.raises(codec.LatentzFormatError, match=message):
        fmt.unpack(with_checksum(body))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    with contextlib.suppress(codec.LatentzFormatError):
        fmt.unpack(data)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=60))
def test_random_bodies_with_a_valid_checksum_parse_or_fail_cleanly(body: bytes) -> None:
    try:
        header, payload = fmt.unpack(with_checksum(b"LZ\x01" + body))
    except codec.LatentzFormatError:
        return
    assert fmt.unpack(fmt.pack(header, payload)) == (header, payload)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_truncations_and_bit_flips_of_real_files_are_always_caught(
    model: codec.EntropyModel, data: st.DataObject
) -> None:
    original = valid_file(model, seed=data.draw(st.integers(0, 20)))
    mutated = bytearray(original)
    if data.draw(st.booleans()):
        mutated = mutated[: data.draw(st.integers(0, len(original) - 1))]
    else:  # 1 to 3 flipped bits: CRC-16/CCITT detects every such error in files this short
        for position in data.draw(st.sets(st.integers(0, 8 * len(original) - 1), min_size=1, max_size=3)):
            mutated[position // 8] ^= 1 << (position % 8)
    with pytest.raises(codec.LatentzFormatError):
        codec.decode_latent(bytes(mutated), entropy=model, fingerprint=FINGERPRINT, model_name="m")


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=40), step=st.integers(1, 64))
def test_garbage_payloads_decode_to_something_or_fail_cleanly(
    model: codec.EntropyModel, payload: bytes, step: int
) -> None:
    """A crafted file with a valid header and checksum but random payload must not crash the decoder."""
    header = digit_header(entropy_id=model.id, step=step)
    data = fmt.pack(header, payload)
    try:
        _, latent = codec.decode_latent(data, entropy=model, fingerprint=FINGERPRINT, model_name="m")
    except codec.LatentzFormatError:
        return
    assert latent.shape == (10,) and np.all(np.isfinite(latent))


# -- quantisation and entropy coding --------------------------------------------------------------
def test_quality_table_is_the_documented_formula_and_monotone() -> None:
    assert tuple(round(256 ** (1 - q / 100)) for q in range(101)) == codec.QUALITY_STEPS
    assert all(a >= b for a, b in zip(codec.QUALITY_STEPS, codec.QUALITY_STEPS[1:], strict=False))
    assert codec.step_for_quality(0) == 256 and codec.step_for_quality(100) == 1
    for bad in (-1, 101, 50.5, True):
        with pytest.raises(ValueError, match="quality"):
            codec.step_for_quality(bad)  # type: ignore[arg-type]
    assert codec.step_from_units(1.5) == 6
    for bad_step in (0.0, -1.0, float("nan"), float("inf"), 0.01, 5000.0):
        with pytest.raises(ValueError, match="step"):
            codec.step_from_units(bad_step)


@pytest.mark.parametrize("step", [1, 3, 6, 17, 32])
def test_symbols_round_trip_through_the_range_coder(model: codec.EntropyModel, step: int) -> None:
    rng = np.random.default_rng(step)
    latents = rng.normal(0, 1.5, (model.channels,))
    symbols = model.quantise(latents, step)
    payload = entropy_module.encode_symbols(model, symbols, step)
    decoded = entropy_module.decode_symbols(model, payload, (model.channels,), step)
    np.testing.assert_array_equal(decoded, symbols)
    # Within one 32-bit word of the ideal code length: the range coder's end-of-stream flush.
    assert len(payload) * 8 <= model.bits(symbols, step) + 32


def test_spatial_latents_round_trip_with_one_model_per_channel() -> None:
    model = fitted_model(channels=6)
    latents = np.random.default_rng(1).normal(0, 1, (6, 3, 5))
    symbols = model.quantise(latents, 4)
    payload = entropy_module.encode_symbols(model, symbols, 4)
    np.testing.assert_array_equal(entropy_module.decode_symbols(model, payload, (6, 3, 5), 4), symbols)


def test_quantisation_error_is_at_most_half_a_step(model: codec.EntropyModel) -> None:
    latents = np.random.default_rng(2).normal(0, 1, (model.channels,)) * 0.9
    for step in (1, 4, 16):
        rebuilt = model.dequantise(model.quantise(latents, step), step)
        assert np.all(np.abs(rebuilt - latents) <= model.step_sizes(step) / 2 + 1e-6)


def test_values_beyond_the_fitted_range_are_clamped_not_lost(model: codec.EntropyModel) -> None:
    extreme = np.full(model.channels, 1e6)
    symbols = model.quantise(extreme, 4)
    _, high = model.symbol_range(4)
    np.testing.assert_array_equal(symbols, high)
    payload = entropy_module.encode_symbols(model, symbols, 4)
    np.testing.assert_array_equal(entropy_module.decode_symbols(model, payload, (model.channels,), 4), high)


def test_probabilities_are_normalised_and_coarser_steps_cost_fewer_bits(model: codec.EntropyModel) -> None:
    for step in (1, 5, 32):
        for channel in range(model.channels):
            assert model.probabilities(channel, step).sum() == pytest.approx(1.0, abs=1e-12)
    latents = np.random.default_rng(3).normal(0, 1, (200, model.channels))
    costs = [
        np.mean([model.bits(model.quantise(latent, step), step) for latent in latents]) for step in (2, 8, 32)
    ]
    assert costs[0] > costs[1] > costs[2]
    # Near-prior channels are nearly free; active ones carry the information.
    in_distribution = np.where(np.arange(model.channels) < model.channels // 2, 1.0, 0.05) * latents[0]
    symbols = model.quantise(in_distribution, 4)
    inactive = sum(
        -np.log2(model.probabilities(c, 4)[symbols[c] - model.symbol_range(4)[0][c]]) for c in (7, 8)
    )
    assert inactive < 0.5


def test_entropy_model_json_round_trip_keeps_tables_and_id(model: codec.EntropyModel, tmp_path: Path) -> None:
    path = tmp_path / "entropy_model.json"
    model.save(path)
    loaded = codec.EntropyModel.load(path)
    assert loaded.sha256 == model.sha256 and loaded.id == model.id
    np.testing.assert_array_equal(loaded.units, model.units)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.counts, model.counts, strict=True))
    assert fitted_model(seed=1).sha256 != model.sha256  # refitting on other data changes the id source


def test_a_tampered_entropy_model_is_refused(model: codec.EntropyModel, tmp_path: Path) -> None:
    data = model.to_json()
    data["lows"][0] += 1
    path = tmp_path / "entropy_model.json"
    path.write_text(json.dumps(data))
    with pytest.raises(codec.EntropyModelError, match="do not match their recorded sha256"):
        codec.EntropyModel.load(path)
    path.write_text("{not json")
    with pytest.raises(codec.EntropyModelError, match="unreadable"):
        codec.EntropyModel.load(path)
    with pytest.raises(codec.EntropyModelError, match="run `latentz export"):
        codec.EntropyModel.load(tmp_path / "missing.json")


def test_fit_refuses_non_finite_posteriors() -> None:
    means = np.zeros((10, 3))
    means[0, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        codec.fit(means, np.ones((10, 3)))


def test_a_latent_with_nan_cannot_be_encoded(model: codec.EntropyModel) -> None:
    latent = np.zeros(model.channels, dtype=np.float32)
    latent[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        codec.encode_latent(
            latent, entropy=model, step=4, fingerprint=FINGERPRINT, height=28, width=28, channels=1
        )


def test_files_from_another_model_or_entropy_model_are_refused(model: codec.EntropyModel) -> None:
    data = valid_file(model)
    other = "fedcba98" * 8
    with pytest.raises(codec.ModelMismatchError, match=r"fingerprint 01234567.*other-model.*fedcba98"):
        codec.decode_latent(data, entropy=model, fingerprint=other, model_name="other-model")
    refitted = fitted_model(seed=5)
    with pytest.raises(codec.ModelMismatchError, match="entropy model"):
        codec.decode_latent(data, entropy=refitted, fingerprint=FINGERPRINT, model_name="m")


def test_a_step_coarse_enough_for_one_symbol_codes_nothing_for_that_channel() -> None:
    """At a step wider than a channel's whole range only one symbol is left: it costs 0 bits."""
    model = fitted_model()
    step = codec.format.MAX_STEP
    low, high = model.symbol_range(step)
    assert np.all(low == high)
    latents = np.random.default_rng(4).normal(0, 1, model.channels)
    symbols = model.quantise(latents, step)
    payload = entropy_module.encode_symbols(model, symbols, step)
    assert payload == b""
    np.testing.assert_array_equal(
        entropy_module.decode_symbols(model, payload, (model.channels,), step), symbols
    )
    data = codec.encode_latent(
        latents, entropy=model, step=step, fingerprint=FINGERPRINT, height=28, width=28, channels=1
    )
    assert len(data) == codec.header_bytes(codec.unpack(data)[0]) == 16  # a 2-byte step, nothing else
