"""Format version 2: the rate-distortion (hyperprior) photo codec, through the shipped bundle and
the torch-free runtime. Golden files pin its bitstream (tests/golden/v2, `scripts/make_golden.py`);
the determinism tests perturb every floating-point path a decoder has and show that the symbols
never move; hostile v2 files fail with the format's own errors.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentz import bundle, codec, imaging, metrics, runtime
from latentz.codec import hyper
from latentz.codec.integer_network import IntegerHyperDecoder
from latentz.data.folders import load_photos
from latentz.hyper_runtime import HyperpriorRuntime

MODEL = "red-cars-hp"
GOLDEN = Path(__file__).resolve().parent / "golden"
V2_CASES = sorted((GOLDEN / "v2").glob("*.json"))
CARS = Path(__file__).resolve().parents[2] / "shared" / "data" / "red-cars"


@pytest.fixture(scope="module")
def model() -> HyperpriorRuntime:
    path = bundle.PACKAGED_BUNDLES / MODEL
    assert bundle.is_bundle(path), f"the bundled model {MODEL} is missing"
    loaded = runtime.load(path)
    assert isinstance(loaded, HyperpriorRuntime)
    return loaded


@pytest.fixture(scope="module")
def held_out() -> list[np.ndarray]:
    """Four held-out cars at their own size, as the bundle's split drew them."""
    photos, _ = load_photos(CARS, "val", 0.1, 0, limit=4)
    return photos


def test_a_v2_header_round_trips_and_v1_is_unchanged() -> None:
    header = codec.Header(version=2, quality=37, fingerprint=b"abcd", entropy_id=7, height=140, width=211,
                          channels=3, latent_shape=(96, 18, 27))  # fmt: skip
    data = codec.pack(header, b"payload")
    assert data[2] == 2 and codec.unpack(data) == (header, b"payload")
    # magic 2, version 1, fingerprint 4, tables 1, sides 2 + 2, channels/rank 1, latent 3, quality 1, CRC 2
    assert codec.header_bytes(header) == 19
    v1 = codec.Header(
        fingerprint=b"abcd", entropy_id=7, height=28, width=28, channels=1, latent_shape=(10,), step=16
    )
    assert codec.pack(v1, b"")[2] == 1 and codec.unpack(codec.pack(v1, b"x"))[0] == v1


def _with_checksum(body: bytes) -> bytes:
    return body + binascii.crc_hqx(body, 0).to_bytes(2, "big")


def test_an_unknown_version_or_a_malformed_v2_header_is_refused() -> None:
    header = codec.Header(version=2, quality=50, fingerprint=b"abcd", entropy_id=1, height=64, width=64,
                          channels=3, latent_shape=(96, 8, 8))  # fmt: skip
    body = bytearray(codec.pack(header, b"xyz")[:-2])
    body[2] = 4
    with pytest.raises(codec.UnsupportedVersionError, match="versions 1, 2 and 3"):
        codec.unpack(_with_checksum(bytes(body)))
    body[2] = 2
    quality_at = len(body) - 4  # the byte before the payload
    body[quality_at] = 101
    with pytest.raises(codec.LatentzFormatError, match="quality 101"):
        codec.unpack(_with_checksum(bytes(body)))
    with pytest.raises(codec.LatentzFormatError):
        codec.Header(version=2, quality=5, fingerprint=b"abcd", entropy_id=1, height=28, width=28, channels=1,
                     latent_shape=(10,))  # fmt: skip


def test_held_out_cars_round_trip_with_rate_and_quality_rising_together(model, held_out) -> None:
    for photo in held_out:
        sizes, scores = [], []
        for quality in (0, 25, 50, 75, 100):
            data = model.compress(photo, quality=quality)
            assert codec.unpack(data)[0].version == 2
            decoded = model.decompress(data)
            assert decoded.shape == photo.shape and decoded.dtype == np.uint8
            sizes.append(len(data))
            scores.append(metrics.psnr(photo, decoded))
        assert sizes == sorted(sizes) and sizes[0] < sizes[-1] / 3
        assert scores[-1] > scores[0] + 6


def test_a_v1_file_still_decodes_beside_v2(model) -> None:
    v1 = runtime.load("red-cars-64")
    data = (GOLDEN / "red-cars-64-q50.latentz").read_bytes()
    assert runtime.model_for_file(data).name == "red-cars-64"
    assert v1.decompress(data).shape == (45, 70, 3)
    with pytest.raises(codec.ModelMismatchError, match="fingerprint"):
        model.decompress(data)


def test_a_step_is_refused_and_quality_is_checked(model, held_out) -> None:
    with pytest.raises(codec.CodecSettingError, match="quality, not a step"):
        model.compress(held_out[0], step=1.0)
    for bad in (-1, 101, 2.5, True):
        with pytest.raises(codec.CodecSettingError):
            model.compress(held_out[0], quality=bad)


# -- golden files ---------------------------------------------------------------------------------
def test_the_decoders_sensitivities_are_measured_channel_by_channel(model) -> None:
    """Each channel's price comes from a finite difference through decoder.onnx; one probe on its
    own (a zero latent with one element moved) must give the same number as the gridded measurement."""
    from latentz.runtime import _run

    sensitivities = model.sensitivities
    assert sensitivities.shape == (model.config.latent_dim,)
    assert np.all(np.isfinite(sensitivities)) and sensitivities.min() > 0
    assert sensitivities.max() / sensitivities.min() > 100  # why a channel's price matters
    for channel in (int(np.argmin(sensitivities)), int(np.argmax(sensitivities))):
        still = np.zeros((1, model.config.latent_dim, 7, 7), np.float32)
        moved = still.copy()
        moved[0, channel, 3, 3] = 0.5
        (before,) = _run(model.decoder, {"latent": still}, "decoder")
        (after,) = _run(model.decoder, {"latent": moved}, "decoder")
        alone = float(((after.astype(np.float64) - before) ** 2).sum() / 0.25)
        assert alone == pytest.approx(sensitivities[channel], rel=1e-3)


def test_the_encoder_spends_fewer_bytes_where_an_error_is_cheap(model, held_out) -> None:
    """The runtime's files use rate-distortion optimised rounding: smaller than plain rounding's
    payload for every held-out car, for a small loss of PSNR (the rd table measures the net gain)."""
    coder = model.coder
    for photo in held_out:
        y, z = model.encode(photo[None])
        z_hat = np.floor(z[0].astype(np.float64) + 0.5).astype(np.int64)
        for quality in (20, 60):
            header, payload = codec.unpack(model.compress(photo, quality=quality))
            plain = coder.encode(y[0], z_hat, quality)
            assert len(payload) < 0.97 * len(plain)
            ours = model.decompress(codec.pack(header, payload))
            plain_latent = coder.decode(plain, header.latent_shape, quality)
            theirs = model.decode(plain_latent[None], *photo.shape[:2])[0]
            assert metrics.psnr(photo, theirs) - 0.8 < metrics.psnr(photo, ours) < metrics.psnr(photo, theirs)


@pytest.mark.parametrize("lambdas", [None, [], ["0.01"], [0.01, -1.0], [float("nan")], [True]])
def test_a_card_without_usable_lambdas_cannot_encode_but_still_decodes(model, tmp_path, lambdas) -> None:
    """The encoder prices errors with the card's trained λs; a card damaged there refuses to encode
    with a clear error, while the receiver, which needs no λ, still decodes the bundle's files."""
    import shutil

    copy = tmp_path / "red-cars-hp-copy"
    shutil.copytree(model.info.path, copy)
    card = json.loads((copy / bundle.CARD_FILE).read_text())
    if lambdas is None:
        del card["codec"]["lambdas"]
    else:
        card["codec"]["lambdas"] = lambdas
    (copy / bundle.CARD_FILE).write_text(json.dumps(card))
    damaged = runtime.load(copy)
    image = np.full((40, 56, 3), 120, np.uint8)
    image[10:30, 10:40] = 30
    with pytest.raises(runtime.ModelRuntimeError, match=r"codec\.lambdas"):
        damaged.compress(image, quality=50)
    data = model.compress(image, quality=50)
    assert np.array_equal(damaged.decompress(data), model.decompress(data))


def test_v2_golden_cases_exist() -> None:
    """Both payloads of the rate-distortion codec are pinned: version 2 and version 3 (planar)."""
    cases = [json.loads(p.read_text()) for p in V2_CASES]
    assert {case["model"] for case in cases} == {MODEL}
    assert {case["version"] for case in cases} == {2, 3}


def _digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.asarray(array, dtype="<i8").tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("case", V2_CASES, ids=lambda p: p.stem)
def test_v2_golden_file_is_reproduced_and_decodes_to_pinned_symbols(case: Path, model) -> None:
    expected = json.loads(case.read_text())
    assert model.fingerprint == expected["fingerprint"], (
        "the bundle was retrained: regenerate the golden files"
    )
    image = imaging.load_array(GOLDEN / expected["image"], None, 3)
    data = model.compress(image, quality=expected["quality"])
    assert data == case.with_suffix(".latentz").read_bytes()
    assert hashlib.sha256(data).hexdigest() == expected["file_sha256"]
    header, payload = codec.unpack(data)
    assert header.version == expected["version"]
    z, symbols = model.coder.file_symbols(payload, header.latent_shape, header.quality, header.version)
    assert list(z.shape) == expected["z_shape"] and _digest(z, symbols) == expected["symbols_sha256"]
    _, latent = model.read(data)
    assert hashlib.sha256(np.asarray(latent, dtype="<f4").tobytes()).hexdigest() == expected["latent_sha256"]
    pinned = imaging.load_array(case.with_suffix(".png"), None, 3).astype(int)
    assert np.abs(model.decompress(data).astype(int) - pinned).max() <= 2


# -- determinism: no floating-point path reaches the symbols --------------------------------------
def _integer_reference(decoder: IntegerHyperDecoder, z: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The hyper-decoder's scale index in pure int64 arithmetic (no BLAS, no float64 products)."""
    from latentz.codec.integer_network import ACTIVATION_MAX, pixel_shuffle

    def accumulate(layer, x: np.ndarray) -> np.ndarray:
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
        height, width = x.shape[1:]
        acc = np.zeros((layer.weight.shape[0], height, width), dtype=np.int64)
        for dy in range(3):
            for dx in range(3):
                window = padded[:, dy : dy + height, dx : dx + width]
                acc += np.einsum("oi,ihw->ohw", layer.weight[:, :, dy, dx].astype(np.int64), window)
        return acc + layer.bias[:, None, None]

    x = z.astype(np.int64)
    for layer in decoder.hidden:
        x = np.clip(layer.requantize(accumulate(layer, x)), 0, ACTIVATION_MAX)
        if layer.shuffle:
            x = pixel_shuffle(x)
    acc = accumulate(decoder.final, x)[:, : size[0], : size[1]]
    return decoder.final.requantize(acc[decoder.latent_channels :], first_channel=decoder.latent_channels)


def test_the_symbols_do_not_depend_on_any_float_path(model, held_out) -> None:
    """The table indices come from integers only: a pure-int64 reference hyper-decoder agrees with
    the BLAS one, noise on the float mean changes the pixels' latent but not a single symbol, and
    decoders with 1 or 2 ONNX Runtime threads and graph optimisations on or off read the same file
    into the same symbols and nearly the same pixels."""
    import onnxruntime as ort

    photo = held_out[0]
    data = model.compress(photo, quality=60)
    header, payload = codec.unpack(data)
    coder = model.coder
    z, symbols, mean = coder.decode_symbols(payload, header.latent_shape, header.quality)
    raw, _ = coder.hyper_decoder(z, header.latent_shape[1:])
    np.testing.assert_array_equal(raw, _integer_reference(coder.hyper_decoder, z, header.latent_shape[1:]))
    rng = np.random.default_rng(0)
    noisy_mean = mean + rng.normal(0, 1e-3, mean.shape).astype(np.float32)
    offsets = coder.offsets(header.quality)
    y = hyper.dequantize(symbols, mean, hyper.step_sizes(offsets))
    assert np.array_equal(hyper.quantize(y, noisy_mean, hyper.step_sizes(offsets)), symbols)
    decoded = []
    for threads in (1, 2):
        for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.graph_optimization_level = level
            session = ort.InferenceSession(str(model.info.file(bundle.DECODER_FILE)), options,
                                           providers=["CPUExecutionProvider"])  # fmt: skip
            again = coder.decode_symbols(payload, header.latent_shape, header.quality)
            assert np.array_equal(again[0], z) and np.array_equal(again[1], symbols)
            (image,) = session.run(
                None, {"latent": coder.decode(payload, header.latent_shape, header.quality)[None]}
            )
            decoded.append(imaging.to_uint8_nhwc(image)[0, : header.height, : header.width].astype(int))
    assert max(int(np.abs(d - decoded[0]).max()) for d in decoded) <= 1


# -- hostile files --------------------------------------------------------------------------------
#: Images whose files take each payload of the rate-distortion codec: noise (version 2, the
#: hyperprior) and a flat grey (version 3, planar), each with the qualities to damage it at.
DAMAGE_SOURCES = {
    2: (np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8), [40]),
    3: (np.full((96, 128, 3), 200, np.uint8), [0, 50, 100]),
}


@pytest.mark.parametrize("version", sorted(DAMAGE_SOURCES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_rate_distortion_files_fail_with_format_errors(model, version: int, data) -> None:
    """Flipped bytes with a fixed checksum, truncations and junk payloads, in files of either
    payload: each either decodes to an image of the declared size or is refused with a
    LatentzFormatError (a clear, 4xx-able error)."""
    image, qualities = DAMAGE_SOURCES[version]
    original = model.compress(image, quality=data.draw(st.sampled_from(qualities)))
    assert codec.unpack(original)[0].version == version
    body = bytearray(original[:-2])
    choice = data.draw(st.sampled_from(["flip", "truncate", "junk"]))
    if choice == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            body[data.draw(st.integers(0, len(body) - 1))] ^= data.draw(st.integers(1, 255))
    elif choice == "truncate":
        body = body[: data.draw(st.integers(0, len(body) - 1))]
    else:
        body = body[:17] + bytearray(data.draw(st.binary(min_size=0, max_size=300)))
    damaged = _with_checksum(bytes(body))
    from latentz.codec.limits import TooLargeError

    try:
        decoded = model.decompress(damaged)
    except (codec.LatentzFormatError, TooLargeError):
        return
    header = codec.unpack(damaged)[0]
    assert decoded.shape == (header.height, header.width, 3) and decoded.dtype == np.uint8


def test_a_v2_file_declaring_a_huge_image_is_refused_from_its_header(model) -> None:
    from latentz.codec.limits import TooLargeError

    header = codec.Header(version=2, quality=50, fingerprint=bytes.fromhex(model.fingerprint)[:4],
                          entropy_id=model.coder.entropy_id, height=3000, width=3000, channels=3,
                          latent_shape=(96, 375, 375))  # fmt: skip
    with pytest.raises(TooLargeError, match="3000x3000"):
        model.decompress(codec.pack(header, b"\x00" * 8))
