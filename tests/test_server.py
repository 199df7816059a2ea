"""The HTTP API over real HTTP: every endpoint, every limit, every documented error status.

One uvicorn server (``live_server``) runs the real app with the installed bundles; requests go
through httpx over loopback, so multipart parsing, streaming limits and headers are the real ones.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import random
import re
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import WEB_TEST_LIMITS, LiveServer, make_digits, running_server
from PIL import Image

from latentz import codec, imaging, metrics, runtime
from latentz.bundle import DECODER_FILE, ENCODER_FILE, ENTROPY_MODEL_FILE, read_bundle
from latentz.server import Limits, create_app

ISOLATION_HEADERS = {
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-embedder-policy": "require-corp",
}


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def model(web_model: str) -> runtime.ModelRuntime:
    return runtime.load(web_model)


@pytest.fixture(scope="module")
def digit_png() -> bytes:
    return imaging.png_bytes(make_digits(1, seed=11)[0][0][:, :, None])


@pytest.fixture(scope="module")
def digit_latentz(model: runtime.ModelRuntime, digit_png: bytes) -> bytes:
    return model.compress(model.prepare(digit_png).image, quality=75)


def png_of(image: np.ndarray) -> bytes:
    return imaging.png_bytes(image)


def read_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def assert_error(response: httpx.Response, status: int, code: str, *fragments: str) -> dict:
    """A JSON error with the documented status and code, whose message says what went wrong."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code, body
    assert body["status"] == status
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    return body


def with_fingerprint(data: bytes, fingerprint: bytes, entropy_id: int | None = None) -> bytes:
    """The same file re-packed as if another model (or entropy model) had written it; CRC still valid."""
    header, payload = codec.unpack(data)
    other = codec.Header(
        fingerprint=fingerprint,
        entropy_id=header.entropy_id if entropy_id is None else entropy_id,
        height=header.height,
        width=header.width,
        channels=header.channels,
        latent_shape=header.latent_shape,
        step=header.step,
    )
    return codec.pack(other, payload)


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image: the classic decompression bomb shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


# -- models and files -----------------------------------------------------------------------------
def test_health_lists_models_limits_and_the_browser_runtime(client: httpx.Client, web_model: str) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert web_model in body["models"]
    assert body["web_runtime"]["available"] is True
    assert body["web_runtime"]["version"] == "1.30.0"
    assert body["limits"]["max_upload_bytes"] == WEB_TEST_LIMITS["max_upload_bytes"]
    for name, value in ISOLATION_HEADERS.items():
        assert response.headers[name] == value


def test_model_list_and_card(client: httpx.Client, web_model: str) -> None:
    listed = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    info = read_bundle(web_model)
    summary = listed[web_model]
    assert summary["fingerprint"] == info.fingerprint
    assert summary["file_fingerprint"] == info.fingerprint[:8]
    assert summary["latent_shape"] == [info.config.latent_dim]
    assert summary["exported"] is True
    digest = hashlib.sha256(info.file(DECODER_FILE).read_bytes()).hexdigest()
    assert summary["files"]["decoder"] == f"/api/models/{web_model}/files/{digest[:16]}/decoder.onnx"

    card = client.get(f"/api/models/{web_model}").json()
    stats = card["card"]["latent_stats"]
    for key in ("mean", "std", "p1", "p99"):
        assert len(stats[key]) == info.config.latent_dim
    assert card["config"]["latent_dim"] == info.config.latent_dim


@pytest.mark.parametrize("filename", [ENCODER_FILE, DECODER_FILE, ENTROPY_MODEL_FILE])
def test_bundle_files_are_served_byte_for_byte_with_revalidation(
    client: httpx.Client, web_model: str, filename: str
) -> None:
    response = client.get(f"/api/models/{web_model}/files/{filename}")
    assert response.status_code == 200
    assert response.content == read_bundle(web_model).file(filename).read_bytes()
    expected_type = "application/json" if filename.endswith(".json") else "application/octet-stream"
    assert response.headers["content-type"].startswith(expected_type)
    again = client.get(
        f"/api/models/{web_model}/files/{filename}", headers={"If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize("filename", ["weights.safetensors", "card.json", "..%2Fconfig.json"])
def test_only_the_browser_files_of_a_bundle_are_served(
    client: httpx.Client, web_model: str, filename: str
) -> None:
    response = client.get(f"/api/models/{web_model}/files/{filename}")
    assert response.status_code == 404
    assert "error" in response.json()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/models/{m}"),
        ("GET", "/api/models/{m}/files/decoder.onnx"),
        ("POST", "/api/models/{m}/encode"),
        ("POST", "/api/models/{m}/decode"),
        ("POST", "/api/models/{m}/latent"),
        ("POST", "/api/models/{m}/reconstruct"),
        ("GET", "/api/models/{m}/sample"),
        ("POST", "/api/models/{m}/interpolate"),
        ("POST", "/api/decode?model={m}"),
        ("POST", "/api/read?model={m}"),
    ],
)
def test_unknown_model_is_404_naming_the_installed_ones(
    client: httpx.Client, web_model: str, digit_png: bytes, digit_latentz: bytes, method: str, path: str
) -> None:
    url = path.format(m="no-such-model")
    kwargs: dict = {}
    if method == "POST" and "interpolate" in path:
        kwargs["json"] = {"start": [0.0], "end": [0.0]}
    elif method == "POST":
        upload = digit_latentz if "decode" in path or "read" in path else digit_png
        kwargs["files"] = {"file": ("x", upload)}
    body = assert_error(client.request(method, url, **kwargs), 404, "unknown_model", "no-such-model")
    assert web_model in body["installed"]


# -- encode ---------------------------------------------------------------------------------------
def test_encode_returns_a_latentz_file_that_decodes_like_the_runtime(
    client: httpx.Client, model: runtime.ModelRuntime, web_model: str, digit_png: bytes
) -> None:
    response = client.post(
        f"/api/models/{web_model}/encode",
        files={"file": ("My photo (1).png", digit_png, "image/png")},
        data={"quality": "75"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-latentz"
    assert response.headers["content-disposition"] == 'attachment; filename="My_photo_1.latentz"'
    header, _ = codec.unpack(response.content)
    assert header.fingerprint_hex == model.fingerprint[:8]
    expected = model.compress(model.prepare(digit_png).image, quality=75)
    assert response.content == expected
    np.testing.assert_array_equal(model.decompress(response.content), model.decompress(expected))


def test_encode_json_reports_sizes_psnr_and_a_webp_at_the_same_budget(
    client: httpx.Client, model: runtime.ModelRuntime, web_model: str
) -> None:
    photo = Image.fromarray(make_digits(1, seed=5)[0][0]).resize((140, 100)).convert("RGB")
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    upload = buffer.getvalue()
    response = client.post(
        f"/api/models/{web_model}/encode?format=json", files={"file": ("d.jpg", upload)}, data={"quality": 40}
    )
    assert response.status_code == 200, response.text
    report = response.json()
    blob = base64.b64decode(report["latentz"]["base64"])
    assert report["latentz"]["bytes"] == len(blob)
    assert report["original"] == {"bytes": len(upload), "format": "JPEG", "width": 140, "height": 100}
    assert "centre-cropped 140x100" in report["note"]
    model_input = read_png(base64.b64decode(report["input"]["png_base64"]))
    expected_input = model.prepare(upload).image
    np.testing.assert_array_equal(model_input, expected_input[:, :, 0])
    reconstruction = read_png(base64.b64decode(report["reconstruction"]["png_base64"]))
    np.testing.assert_array_equal(reconstruction, model.decompress(blob)[:, :, 0])
    assert report["reconstruction"]["psnr"] == pytest.approx(
        metrics.psnr(expected_input, model.decompress(blob))
    )
    assert report["ratio"] == pytest.approx(len(upload) / len(blob))
    assert report["raw_ratio"] == pytest.approx(expected_input.size / len(blob))
    assert report["step"] == codec.step_for_quality(40)
    webp = base64.b64decode(report["webp"]["webp_base64"])
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"
    assert report["webp"]["bytes"] == len(webp)
    assert report["webp"]["fits_budget"] == (len(webp) <= len(blob))
    if not report["webp"]["fits_budget"]:
        assert report["webp"]["quality"] == 0 and "even WebP quality 0" in report["webp"]["note"]


def test_the_webp_note_writes_its_byte_counts_with_separators() -> None:
    from latentz.server.reports import _webp_at_budget

    noise = np.random.default_rng(3).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert "the best that fits in 12,000 bytes" in _webp_at_budget(noise, 12_000)["note"]
    tight = _webp_at_budget(noise, 100)["note"]
    assert re.match(r"even WebP quality 0 takes \d{1,3}(,\d{3})+ bytes, more than the 100-byte budget", tight)


def test_a_flat_image_coded_exactly_reports_psnr_as_null(client: httpx.Client, web_model: str) -> None:
    """WebP codes a flat image exactly: infinite PSNR, which JSON cannot carry, is null (this used
    to be a 500 from the JSON encoder)."""
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 0).save(buffer, format="PNG")
    response = client.post(
        f"/api/models/{web_model}/encode?format=json", files={"file": ("flat.png", buffer.getvalue())}
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["webp"]["psnr"] is None
    assert report["reconstruction"]["psnr"] is None or report["reconstruction"]["psnr"] > 0


def test_quality_changes_the_step_and_never_grows_the_file_when_lowered(
    client: httpx.Client, web_model: str, digit_png: bytes
) -> None:
    sizes = {}
    for quality in (0, 100):
        response = client.post(
            f"/api/models/{web_model}/encode", files={"file": ("d.png", digit_png)}, data={"quality": quality}
        )
        assert response.status_code == 200
        sizes[quality] = len(response.content)
        assert codec.unpack(response.content)[0].step == codec.step_for_quality(quality)
    assert sizes[0] <= sizes[100]


@pytest.mark.parametrize("quality", ["101", "-1", "high", "7.5"])
def test_bad_quality_is_400_naming_the_field(
    client: httpx.Client, web_model: str, digit_png: bytes, quality: str
) -> None:
    response = client.post(
        f"/api/models/{web_model}/encode", files={"file": ("d.png", digit_png)}, data={"quality": quality}
    )
    body = assert_error(response, 400, "bad_request", "quality")
    assert body["details"][0]["field"].endswith("quality")


def test_missing_file_field_is_400(client: httpx.Client, web_model: str) -> None:
    assert_error(
        client.post(f"/api/models/{web_model}/encode", data={"quality": 50}), 400, "bad_request", "file"
    )


# -- content sniffing -----------------------------------------------------------------------------
def test_uploads_are_judged_by_content_not_name_or_declared_type(
    client: httpx.Client, web_model: str, digit_png: bytes, digit_latentz: bytes
) -> None:
    # a PNG that claims to be a .latentz is still encoded as the PNG it is
    disguised = client.post(
        f"/api/models/{web_model}/encode", files={"file": ("x.latentz", digit_png, "application/x-latentz")}
    )
    assert disguised.status_code == 200
    # a .latentz file named like a photo is refused by the encoder, with advice
    body = assert_error(
        client.post(
            f"/api/models/{web_model}/encode", files={"file": ("photo.png", digit_latentz, "image/png")}
        ),
        415,
        "unsupported_media",
        ".latentz file",
        "decode it",
    )
    assert body["detected"] == "latentz"
    # text named .png
    assert_error(
        client.post(
            f"/api/models/{web_model}/encode", files={"file": ("a.png", b"hello, world", "image/png")}
        ),
        415,
        "unsupported_media",
        "not a supported image",
    )
    # an image sent to the decoder
    body = assert_error(
        client.post("/api/decode", files={"file": ("a.latentz", digit_png)}),
        415,
        "unsupported_media",
        "not a .latentz file",
    )
    assert body["detected"] == "image"


def test_truncated_image_is_400_corrupt(client: httpx.Client, web_model: str) -> None:
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG")
    truncated = buffer.getvalue()[: len(buffer.getvalue()) // 3]
    assert_error(
        client.post(f"/api/models/{web_model}/encode", files={"file": ("t.jpg", truncated)}),
        400,
        "bad_request",
        "corrupt JPEG",
    )


def test_empty_upload_is_400(client: httpx.Client, web_model: str) -> None:
    assert_error(
        client.post(f"/api/models/{web_model}/encode", files={"file": ("e.png", b"")}),
        400,
        "bad_request",
        "empty",
    )
    assert_error(client.post("/api/decode", files={"file": ("e.latentz", b"")}), 400, "bad_request", "empty")


# -- size limits ----------------------------------------------------------------------------------
def test_decompression_bomb_is_413_refused_before_decoding(client: httpx.Client, web_model: str) -> None:
    bomb = png_header_claiming(5_000, 5_000)  # 25 MP: over this server's 4 MP limit
    assert len(bomb) < 200
    body = assert_error(
        client.post(f"/api/models/{web_model}/encode", files={"file": ("bomb.png", bomb)}),
        413,
        "too_large",
        "5000x5000 = 25,000,000 pixels",
        "refused before decoding",
    )
    assert body["limit"] == WEB_TEST_LIMITS["max_pixels"]
    assert (body["width"], body["height"]) == (5_000, 5_000)


def test_giant_bomb_beyond_pillows_own_limit_is_413_too(client: httpx.Client, web_model: str) -> None:
    bomb = png_header_claiming(60_000, 60_000)  # 3.6 GP: Pillow itself refuses to open it
    assert_error(
        client.post(f"/api/models/{web_model}/encode", files={"file": ("bomb.png", bomb)}),
        413,
        "too_large",
        "refused before decoding",
        "3600000000",
    )


def test_upload_over_the_byte_limit_is_413(client: httpx.Client, web_model: str) -> None:
    too_big = b"\x89PNG\r\n\x1a\n" + bytes(WEB_TEST_LIMITS["max_upload_bytes"] + 200_000)
    response = client.post(f"/api/models/{web_model}/encode", files={"file": ("big.png", too_big)})
    body = assert_error(response, 413, "too_large", "upload too large")
    assert body["limit"] == WEB_TEST_LIMITS["max_upload_bytes"]


def test_file_just_over_the_limit_inside_the_multipart_margin_is_413(
    client: httpx.Client, web_model: str
) -> None:
    just_over = b"\x89PNG\r\n\x1a\n" + bytes(WEB_TEST_LIMITS["max_upload_bytes"])
    response = client.post(f"/api/models/{web_model}/encode", files={"file": ("big.png", just_over)})
    assert_error(response, 413, "too_large", "limit per file")


def test_chunked_upload_without_length_is_cut_off_at_the_limit(
    live_server: LiveServer, web_model: str
) -> None:
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        boundary = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        yield boundary
        for _ in range(64):  # 4 MiB in 64 KiB chunks, far over the 1 MiB limit
            sent += 65536
            yield bytes(65536)
        yield b"\r\n--xyz--\r\n"

    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        response = http.post(f"/api/models/{web_model}/encode", content=body(), headers=headers)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "too_large", "upload too large")


# -- decode and read ------------------------------------------------------------------------------
def test_decode_finds_the_model_by_fingerprint(
    client: httpx.Client, model: runtime.ModelRuntime, web_model: str, digit_latentz: bytes
) -> None:
    for url in ("/api/decode", f"/api/models/{web_model}/decode", f"/api/decode?model={web_model}"):
        response = client.post(url, files={"file": ("x.bin", digit_latentz, "image/png")})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        assert response.headers["x-latentz-model"] == web_model
        np.testing.assert_array_equal(read_png(response.content), model.decompress(digit_latentz)[:, :, 0])


def test_read_returns_the_header_and_the_exact_dequantised_latent(
    client: httpx.Client, model: runtime.ModelRuntime, web_model: str, digit_latentz: bytes
) -> None:
    response = client.post("/api/read", files={"file": ("x.latentz", digit_latentz)})
    assert response.status_code == 200, response.text
    body = response.json()
    header, latent = model.read(digit_latentz)
    assert body["model"] == web_model
    assert body["fingerprint"] == header.fingerprint_hex
    assert (body["width"], body["height"], body["channels"]) == (header.width, header.height, header.channels)
    assert body["latent_shape"] == list(header.latent_shape)
    assert body["step_units"] == header.step / codec.FINE_PER_UNIT
    assert body["format_version"] == 1 and body["quality"] is None
    assert body["bytes"] == len(digit_latentz)
    # The receiver's decoder: the float16 copy the model list offers (its pixels within a grey level).
    listed = client.get(f"/api/models/{web_model}").json()["files"]
    assert body["decoder"] == listed["decoder_fp16"]
    assert re.fullmatch(f"/api/models/{web_model}/files/[0-9a-f]{{16}}/decoder.fp16.onnx", body["decoder"])
    np.testing.assert_array_equal(np.asarray(body["latent"], dtype=np.float32), latent.ravel())


def test_file_from_an_unknown_model_is_409_naming_its_fingerprint(
    client: httpx.Client, web_model: str, digit_latentz: bytes
) -> None:
    stranger = with_fingerprint(digit_latentz, bytes.fromhex("deadbeef"))
    for url in ("/api/decode", "/api/read"):
        body = assert_error(
            client.post(url, files={"file": ("s.latentz", stranger)}), 409, "unknown_fingerprint", "deadbeef"
        )
        assert body["file_fingerprint"] == "deadbeef"
        assert web_model in body["installed"]


def test_file_for_another_model_than_the_one_named_is_409_naming_both(
    client: httpx.Client, model: runtime.ModelRuntime, web_model: str, digit_latentz: bytes
) -> None:
    stranger = with_fingerprint(digit_latentz, bytes.fromhex("deadbeef"))
    for url in (f"/api/models/{web_model}/decode", f"/api/read?model={web_model}"):
        assert_error(
            client.post(url, files={"file": ("s.latentz", stranger)}),
            409,
            "model_mismatch",
            "deadbeef",
            model.fingerprint[:8],
        )
    refitted = with_fingerprint(
        digit_latentz, bytes.fromhex(model.fingerprint[:8]), (model.entropy.id + 1) % 256
    )
    assert_error(
        client.post("/api/decode", files={"file": ("r.latentz", refitted)}),
        409,
        "model_mismatch",
        "entropy model",
    )


def test_corrupt_truncated_and_future_files_are_refused_with_the_reason(
    client: httpx.Client, digit_latentz: bytes
) -> None:
    flipped = bytearray(digit_latentz)
    flipped[len(flipped) // 2] ^= 0x40
    assert_error(
        client.post("/api/decode", files={"file": ("c", bytes(flipped))}), 400, "bad_request", "checksum"
    )
    assert_error(
        client.post("/api/decode", files={"file": ("t", digit_latentz[:9])}), 400, "bad_request", "truncated"
    )
    future_body = digit_latentz[:2] + b"\x09" + digit_latentz[3:-2]  # a future latentz's file: own CRC
    future = future_body + binascii.crc_hqx(future_body, 0).to_bytes(2, "big")
    body = assert_error(
        client.post("/api/read", files={"file": ("f", future)}), 415, "unsupported_media", "version 9"
    )
    assert body["detected"] == "latentz"


def test_random_damage_never_causes_a_server_error(client: httpx.Client, digit_latentz: bytes) -> None:
    """Bit flips, truncations and garbage with a valid CRC: always a 4xx JSON error or a clean decode."""
    rng = random.Random(7)
    header, _ = codec.unpack(digit_latentz)
    cases = []
    for _ in range(12):
        damaged = bytearray(digit_latentz)
        damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        cases.append(bytes(damaged))
        cases.append(digit_latentz[: rng.randrange(len(digit_latentz))])
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
        cases.append(codec.pack(header, garbage))  # valid container, nonsense payload
    for case in cases:
        response = client.post("/api/decode", files={"file": ("d", case)})
        assert response.status_code in (200, 400, 409, 415), (case, response.text)
        if response.status_code != 200:
            assert response.json()["error"]


# -- latents: reconstruct, latent, sample, interpolate -------------------------------------------
def test_reconstruct_png_and_json(
    client: httpx.Client, model: runtime.ModelRuntime, web_model: str, digit_png: bytes
) -> None:
    expected = model.reconstruct(model.prepare(digit_png).image)[0]
    png = client.post(f"/api/models/{web_model}/reconstruct", files={"file": ("d.png", digit_png)})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(read_png(png.content), expected[:, :, 0])
    report = client.post(
        f"/api/models/{web_model}/reconstruct?format=json", files={"file": ("d.png", digit_png)}
    ).json()
    assert report["psnr"] == pytest.approx(metrics.psnr(model.prepare(digit_png).image, expected))


def test_latent_is_the_posterior_of_the_prepared_image(
    client: httpx.Client, model: runtime.ModelRuntime, web_model: str, digit_png: bytes
) -> None:
    body = client.post(f"/api/models/{web_model}/latent", files={"file": ("d.png", digit_png)}).json()
    mean, logvar = model.encode(model.prepare(digit_png).image)
    assert body["shape"] == [model.config.latent_dim]
    np.testing.assert_array_equal(np.asarray(body["mean"], dtype=np.float32), mean[0])
    np.testing.assert_array_equal(np.asarray(body["logvar"], dtype=np.float32), logvar[0])


def test_sample_is_seeded_and_bounded(
    client: httpx.Client, model: runtime.ModelRuntime, web_model: str
) -> None:
    first = client.get(f"/api/models/{web_model}/sample", params={"count": 3, "seed": 42}).json()
    again = client.get(f"/api/models/{web_model}/sample", params={"count": 3, "seed": 42}).json()
    other = client.get(f"/api/models/{web_model}/sample", params={"count": 3, "seed": 43}).json()
    assert first == again
    assert first["latents"] != other["latents"]
    latents = np.asarray(first["latents"], dtype=np.float32)
    expected = np.random.default_rng(42).standard_normal((3, model.config.latent_dim)).astype(np.float32)
    np.testing.assert_array_equal(latents, expected)
    decoded = model.decode(latents)
    for png, image in zip(first["images"], decoded, strict=True):
        np.testing.assert_array_equal(read_png(base64.b64decode(png)), image[:, :, 0])
    grid = client.get(f"/api/models/{web_model}/sample", params={"count": 3, "seed": 42, "format": "png"})
    assert grid.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(read_png(grid.content), imaging.grid(decoded, 3)[:, :, 0])
    too_many = WEB_TEST_LIMITS["max_samples"] + 1
    assert_error(
        client.get(f"/api/models/{web_model}/sample", params={"count": too_many}), 400, "bad_request", "count"
    )
    assert_error(
        client.get(f"/api/models/{web_model}/sample", params={"seed": -1}), 400, "bad_request", "seed"
    )


def test_interpolate_runs_from_start_to_end(
    client: httpx.Client, model: runtime.ModelRuntime, web_model: str
) -> None:
    dim = model.config.latent_dim
    start, end = [-1.0] * dim, [1.0] * dim
    body = client.post(
        f"/api/models/{web_model}/interpolate", json={"start": start, "end": end, "steps": 5}
    ).json()
    latents = np.asarray(body["latents"], dtype=np.float32)
    np.testing.assert_allclose(latents[0], start)
    np.testing.assert_allclose(latents[2], np.zeros(dim), atol=1e-7)
    np.testing.assert_allclose(latents[-1], end)
    decoded = model.decode(latents)
    np.testing.assert_array_equal(read_png(base64.b64decode(body["images"][-1])), decoded[-1][:, :, 0])
    slerp = client.post(
        f"/api/models/{web_model}/interpolate",
        json={"start": start, "end": [1.0] + [0.0] * (dim - 1), "method": "slerp"},
    ).json()
    norms = np.linalg.norm(np.asarray(slerp["latents"]), axis=1)
    assert norms.min() > 0.99  # slerp keeps to the sphere between two unit-ish ends; lerp would dip
    strip = client.post(
        f"/api/models/{web_model}/interpolate?format=png", json={"start": start, "end": end, "steps": 4}
    )
    assert strip.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"start": [0.0], "end": [0.0]}, "values"),
        ({"start": "zeros", "end": [0.0]}, "start"),
        ({"end": [0.0]}, "start"),
        ({"start": "DIM", "end": "DIM", "steps": 1}, "steps"),
        ({"start": "DIM", "end": "DIM", "steps": 13}, "at most 12"),
    ],
)
def test_interpolate_refuses_bad_bodies(
    client: httpx.Client, model: runtime.ModelRuntime, web_model: str, payload: dict, fragment: str
) -> None:
    dim = model.config.latent_dim
    payload = {key: ([0.5] * dim if value == "DIM" else value) for key, value in payload.items()}
    response = client.post(f"/api/models/{web_model}/interpolate", json=payload)
    assert_error(response, 400, "bad_request", fragment)


def test_a_json_body_over_4_mib_is_413_before_it_is_parsed(client: httpx.Client, web_model: str) -> None:
    """JSON is parsed in the event loop: a 12 MiB body would stall every other request for ~0.2 s."""
    from latentz.server.limits import MAX_JSON_BYTES

    huge = json.dumps({"start": [0.123456789] * 400_000, "end": [0.5] * 10})
    assert len(huge) > MAX_JSON_BYTES
    headers = {"Content-Type": "application/json"}
    response = client.post(f"/api/models/{web_model}/interpolate", content=huge, headers=headers)
    body = assert_error(response, 413, "too_large", "JSON body too large")
    assert body["limit"] == MAX_JSON_BYTES


def test_interpolate_refuses_nan_and_malformed_json(
    client: httpx.Client, model: runtime.ModelRuntime, web_model: str
) -> None:
    dim = model.config.latent_dim
    nan_body = json.dumps({"start": [float("nan")] * dim, "end": [0.0] * dim})
    headers = {"Content-Type": "application/json"}
    response = client.post(f"/api/models/{web_model}/interpolate", content=nan_body, headers=headers)
    assert_error(response, 400, "bad_request", "finite")
    response = client.post(f"/api/models/{web_model}/interpolate", content=b"{not json", headers=headers)
    assert_error(response, 400, "bad_request", "JSON")


# -- routes, methods, pages -----------------------------------------------------------------------
def test_unknown_routes_and_wrong_methods_are_json(client: httpx.Client) -> None:
    assert_error(client.get("/api/nothing-here"), 404, "not_found", "/api/nothing-here")
    assert_error(client.get("/api/decode"), 405, "method_not_allowed", "GET")


@pytest.mark.parametrize("path", ["/", "/codec", "/receiver", "/explorer"])
def test_pages_are_served_cross_origin_isolated(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<main>" in response.text
    for name, value in ISOLATION_HEADERS.items():
        assert response.headers[name] == value


def test_static_and_vendor_files_have_the_right_types(client: httpx.Client) -> None:
    assert client.get("/static/js/explorer.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    module = client.get("/vendor/onnxruntime-web/ort.wasm.min.mjs")
    assert module.status_code == 200 and module.headers["content-type"].startswith("text/javascript")
    wasm = client.get("/vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm")
    assert wasm.headers["content-type"] == "application/wasm"
    assert wasm.content[:4] == b"\0asm"
    assert wasm.headers["cross-origin-embedder-policy"] == "require-corp"


@pytest.mark.parametrize(
    "path",
    [
        "/vendor/onnxruntime-web/ort.all.min.js",
        "/vendor/onnxruntime-web/..%2F..%2Fpackage.json",
        "/static/..%2F..%2Fserver%2Fapp.py",
        "/static/../server/app.py",
        "/static/nothing.js",
    ],
)
def test_nothing_outside_the_web_folder_and_the_three_ort_files_is_served(
    client: httpx.Client, path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "error" in response.json()


def test_openapi_documents_every_endpoint_and_error(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/api/health",
        "/api/models",
        "/api/models/{name}",
        "/api/models/{name}/files/{filename}",
        "/api/models/{name}/encode",
        "/api/models/{name}/decode",
        "/api/models/{name}/latent",
        "/api/models/{name}/reconstruct",
        "/api/models/{name}/sample",
        "/api/models/{name}/interpolate",
        "/api/encode",
        "/api/decode",
        "/api/read",
    ):
        assert path in paths, path
    for path in ("/api/models/{name}/encode", "/api/encode"):
        encode = paths[path]["post"]["responses"]
        assert {"400", "404", "408", "409", "413", "415", "429"} <= set(encode), path
        form = spec["components"]["schemas"][
            paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[
                -1
            ]
        ]
        assert form["required"] == ["file"], path  # quality is optional: the model's recommended one
        assert "recommended quality" in form["properties"]["quality"]["description"]
    error_schema = {"$ref": "#/components/schemas/ErrorBody"}
    assert encode["413"]["content"]["application/json"]["schema"] == error_schema
    assert set(spec["components"]["schemas"]["ErrorBody"]["required"]) == {"error", "code", "status"}
    for path, operations in paths.items():
        for method, operation in operations.items():
            # validation errors are answered 400 in the error shape, so no operation documents 422
            assert "422" not in operation["responses"], (method, path)
            if operation.get("parameters") or operation.get("requestBody"):
                assert operation["responses"]["400"]["content"]["application/json"]["schema"] == error_schema


def test_wrong_method_is_405_with_an_allow_header(client: httpx.Client, web_model: str) -> None:
    """RFC 9110: a 405 must say which methods the resource supports (found by schemathesis)."""
    body = assert_error(client.get("/api/decode"), 405, "method_not_allowed", "GET is not allowed")
    assert body["status"] == 405
    assert client.get("/api/decode").headers["allow"] == "POST"
    assert client.request("TRACE", f"/api/models/{web_model}/sample").headers["allow"] == "GET"


# -- concurrency ----------------------------------------------------------------------------------
def test_concurrent_requests_share_one_session_per_model_and_agree(
    live_server: LiveServer,
    model: runtime.ModelRuntime,
    web_model: str,
    digit_png: bytes,
    digit_latentz: bytes,
) -> None:
    registry = live_server.app.state.registry
    served = registry.runtime(web_model)
    sessions = (served.encoder, served.decoder)
    expected_png = png_of(model.decompress(digit_latentz))
    results: list[tuple[int, int, bytes]] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        with httpx.Client(base_url=live_server.url, timeout=60) as http:
            if index % 2:
                response = http.post("/api/decode", files={"file": ("x", digit_latentz)})
            else:
                response = http.post(
                    f"/api/models/{web_model}/encode",
                    files={"file": ("d.png", digit_png)},
                    data={"quality": 75},
                )  # digit_latentz's quality
        with lock:
            results.append((index, response.status_code, response.content))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 16
    for index, status, content in results:
        assert status == 200
        assert content == (expected_png if index % 2 else digit_latentz)
    assert registry.runtime(web_model) is served
    assert (served.encoder, served.decoder) == sessions  # created once, at start-up


def test_missing_onnxruntime_web_says_how_to_install_it(tmp_path: Path) -> None:
    app = create_app(preload=False, node_modules=tmp_path)
    with running_server(app) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        health = http.get("/api/health").json()
        assert health["web_runtime"]["available"] is False
        assert "npm ci" in health["web_runtime"]["error"]
        body = assert_error(
            http.get("/vendor/onnxruntime-web/ort.wasm.min.mjs"), 404, "web_runtime_missing", "npm ci"
        )
        assert str(tmp_path) not in body["error"]  # where it looked is for the server's log


# -- the command and the torch-free promise -------------------------------------------------------
def test_server_never_imports_torch(web_model: str, digit_png: bytes) -> None:
    script = (
        "import sys\n"
        "from latentz.server import create_app\n"
        "from latentz.server.registry import ModelRegistry\n"
        "import latentz.commands.serve\n"
        "registry = ModelRegistry(); registry.refresh(); assert registry.preload()\n"
        f"model = registry.runtime({web_model!r})\n"
        "data = sys.stdin.buffer.read()\n"
        "model.decompress(model.compress(model.prepare(data).image))\n"
        "create_app()\n"
        "assert 'torch' not in sys.modules, [m for m in sys.modules if m.startswith('torch')]\n"
    )
    done = subprocess.run([sys.executable, "-c", script], input=digit_png, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()


def test_latentz_serve_serves_the_app(tmp_path: Path) -> None:
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "latentz", "serve", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "latentz serve did not start"
                time.sleep(0.2)
        assert health.json()["status"] == "ok"
        assert httpx.get(f"http://127.0.0.1:{port}/explorer").status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=20)


# -- fully convolutional (photo) models -----------------------------------------------------------
def test_spatial_model_codes_a_non_square_photo_at_its_own_size(
    client: httpx.Client, live_server: LiveServer, spatial_web_model: str
) -> None:
    model = runtime.load(spatial_web_model)
    rng = np.random.default_rng(3)
    photo = Image.fromarray(rng.integers(0, 255, (45, 70, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    upload = buffer.getvalue()
    report = client.post(
        f"/api/models/{spatial_web_model}/encode?format=json", files={"file": ("p.png", upload)}
    ).json()
    blob = base64.b64decode(report["latentz"]["base64"])
    header, _ = codec.unpack(blob)
    assert (header.width, header.height) == (70, 45)
    assert list(header.latent_shape) == list(model.config.latent_shape(45, 70))
    decoded = client.post("/api/decode", files={"file": ("p.latentz", blob)})
    np.testing.assert_array_equal(read_png(decoded.content), model.decompress(blob))
    body = client.post("/api/read", files={"file": ("p.latentz", blob)}).json()
    assert body["latent_shape"] == list(header.latent_shape)
    assert len(body["latent"]) == int(np.prod(header.latent_shape))


def test_spatial_model_scales_huge_photos_down_to_the_side_limit(
    spatial_web_model: str,
) -> None:
    app = create_app(Limits(max_spatial_side=40), preload=False)
    photo = Image.fromarray(np.full((60, 100, 3), 128, dtype=np.uint8))
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    with running_server(app) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        report = http.post(
            f"/api/models/{spatial_web_model}/encode?format=json",
            files={"file": ("p.png", buffer.getvalue())},
        ).json()
    assert (report["input"]["width"], report["input"]["height"]) == (40, 24)
    assert "scaled 100x60 down to 40x24" in report["note"]
    assert report["original"]["width"] == 100


# -- which model, which quality, and what the codec did to the upload -----------------------------------
def colour_photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A colourful photo-like image: a red-to-blue gradient with noise (grey in no part)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, width)[None, :]
    image = np.zeros((height, width, 3))
    image[..., 0] = 220 * (1 - ramp)
    image[..., 1] = 60 + 40 * np.linspace(0.0, 1.0, height)[:, None]
    image[..., 2] = 220 * ramp
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def encoded_with(client: httpx.Client, url: str, upload: bytes, **data: object) -> dict:
    response = client.post(url, files={"file": ("upload", upload)}, data=data)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_model_list_carries_each_models_recommended_quality(client: httpx.Client) -> None:
    from latentz import choice

    listed = client.get("/api/models").json()["models"]
    assert listed
    for summary in listed:
        expected = choice.recommended_quality(read_bundle(summary["name"]).config)
        assert summary["recommended_quality"] == expected.quality, summary["name"]
        assert summary["recommended_quality_reason"] == expected.reason
        card = client.get(f"/api/models/{summary['name']}").json()
        assert card["recommended_quality"] == expected.quality
    by_name = {summary["name"]: summary["recommended_quality"] for summary in listed}
    assert by_name.get("mnist-z32", 30) == 30 and by_name.get("red-cars-64", 50) == 50


def test_api_encode_picks_the_model_that_fits_and_codes_at_its_recommended_quality(
    client: httpx.Client,
) -> None:
    """`POST /api/encode` runs latentz.choice's rule on the upload: a colour photo to the photo
    codec nearest its size, a small grey digit to the digit codec, each at its recommended quality."""
    from latentz import choice

    digit = make_digits(1, seed=12)[0][0][:, :, None]
    for image, kind in ((colour_photo(207, 118), "a colour photo"), (digit, "a small grey image")):
        height, width, channels = image.shape
        expected = choice.choose_model(width, height, channels)
        recommended = choice.recommended_quality(expected.info.config)
        report = encoded_with(client, "/api/encode?format=json", png_of(image))
        assert report["model"] == expected.name
        assert report["model_reason"] == expected.reason and report["model_reason"].startswith(kind)
        assert report["quality"] == recommended.quality
        assert report["quality_reason"] == recommended.reason
        v1 = report["format_version"] == 1
        assert report["step"] == (codec.step_for_quality(recommended.quality) if v1 else None)
        assert report["warning"] is None and report["better_model"] is None
        coder = runtime.load(expected.name)
        blob = base64.b64decode(report["latentz"]["base64"])
        assert blob == coder.compress(coder.prepare(png_of(image)).image, quality=recommended.quality)

        answer = client.post("/api/encode", files={"file": ("upload.png", png_of(image))})
        assert answer.status_code == 200, answer.text
        assert answer.content == blob
        assert answer.headers["x-latentz-model"] == expected.name
        assert answer.headers["x-latentz-quality"] == str(recommended.quality)
    if {"mnist-z32", "red-cars-hp"} <= set(client.get("/api/health").json()["models"]):
        assert choice.choose_model(207, 118, 3).name == "red-cars-hp"
        assert choice.choose_model(28, 28, 1).name == "mnist-z32"


def test_an_explicit_quality_still_wins_and_a_bad_one_is_still_400(client: httpx.Client) -> None:
    upload = png_of(colour_photo(60, 40))
    report = encoded_with(client, "/api/encode?format=json", upload, quality=80)
    assert report["quality"] == 80 and report["quality_reason"] is None
    assert report["model"] == "red-cars-64" and report["step"] == codec.step_for_quality(80)
    response = client.post("/api/encode", files={"file": ("p.png", upload)}, data={"quality": "101"})
    assert_error(response, 400, "bad_request", "quality")


def test_encode_without_quality_uses_the_models_recommended_quality_not_75(
    client: httpx.Client, web_model: str, digit_png: bytes
) -> None:
    from latentz import choice

    recommended = choice.recommended_quality(read_bundle(web_model).config).quality
    assert recommended != 75
    response = client.post(f"/api/models/{web_model}/encode", files={"file": ("d.png", digit_png)})
    assert response.status_code == 200, response.text
    assert codec.unpack(response.content)[0].step == codec.step_for_quality(recommended)
    assert response.headers["x-latentz-quality"] == str(recommended)
    report = encoded_with(client, f"/api/models/{web_model}/encode?format=json", digit_png)
    assert report["quality"] == recommended and "recommended quality" in report["quality_reason"]
    assert report["model_reason"] is None  # named, not chosen


def test_a_model_that_does_not_fit_the_upload_is_used_with_a_one_sentence_warning(
    client: httpx.Client, web_model: str
) -> None:
    """A colour photo sent to a grey 28x28 digit model is coded as asked, and the report says why
    that is a poor fit and which installed model fits better, in one sentence (no CLI flags)."""
    from latentz import choice

    photo = colour_photo(207, 118)
    upload = png_of(photo)
    better = choice.choose_model(207, 118, 3)
    expected = choice.fit_warning(read_bundle(web_model), 207, 118, 3, how_to_switch=None)
    for url in (f"/api/models/{web_model}/encode?format=json", f"/api/encode?format=json&model={web_model}"):
        report = encoded_with(client, url, upload)
        assert report["model"] == web_model
        assert report["warning"] == expected
        assert "loses its colour" in expected and expected.endswith(f"{better.name} fits it better.")
        assert "-m" not in expected and expected.count(".") == 1
        assert report["better_model"] == better.name
    fitting = encoded_with(client, f"/api/encode?format=json&model={better.name}", upload)
    assert fitting["warning"] is None and fitting["better_model"] is None
    assert_error(
        client.post("/api/encode?model=nosuch", files={"file": ("p.png", upload)}), 404, "unknown_model"
    )


def rgba_png() -> tuple[bytes, np.ndarray]:
    """A real RGBA PNG: an opaque red disc, a half-transparent blue band, the rest fully transparent
    (and black, so compositing on anything but white would show)."""
    rows, cols = np.mgrid[0:48, 0:64]
    pixels = np.zeros((48, 64, 4), np.uint8)
    disc = np.hypot(rows - 24, cols - 20) < 14
    pixels[disc] = (220, 20, 20, 255)
    band = (cols >= 44) & (cols < 56)
    pixels[band] = (0, 0, 255, 128)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue(), pixels


def test_transparent_pixels_are_composited_on_white_and_the_report_says_so(
    client: httpx.Client, spatial_web_model: str
) -> None:
    upload, pixels = rgba_png()
    report = encoded_with(client, f"/api/models/{spatial_web_model}/encode?format=json", upload)
    assert "Transparent pixels were composited on white: this is how the model sees them." in report["notes"]
    seen = read_png(base64.b64decode(report["input"]["png_base64"]))
    clear = pixels[:, :, 3] == 0
    assert (seen[clear] == 255).all(), "fully transparent pixels are white, not black"
    np.testing.assert_array_equal(seen[pixels[:, :, 3] == 255], pixels[pixels[:, :, 3] == 255][:, :3])
    half = seen[pixels[:, :, 3] == 128]
    assert np.abs(half.astype(int) - (127, 127, 255)).max() <= 1  # blue at 50% over white
    opaque = io.BytesIO()
    Image.fromarray(pixels[:, :, :3]).convert("RGBA").save(opaque, format="PNG")  # alpha everywhere 255
    report = encoded_with(client, f"/api/models/{spatial_web_model}/encode?format=json", opaque.getvalue())
    assert report["notes"] == []


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_an_animated_image_says_that_only_its_first_frame_is_coded(
    client: httpx.Client, spatial_web_model: str, fmt: str
) -> None:
    """A real 3-frame GIF (and animated WebP, APNG): the first frame is coded, and said to be."""
    colours = ((230, 30, 30), (30, 200, 30), (30, 30, 230))
    frames = [Image.fromarray(np.full((32, 48, 3), colour, np.uint8)) for colour in colours]
    buffer = io.BytesIO()
    options = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(
        buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **options
    )
    upload = buffer.getvalue()
    assert Image.open(io.BytesIO(upload)).n_frames == 3
    report = encoded_with(client, f"/api/models/{spatial_web_model}/encode?format=json", upload)
    kind = {"WEBP": "WebP"}.get(fmt, fmt)
    assert f"This animated {kind} has 3 frames: only the first frame is coded." in report["notes"]
    seen = read_png(base64.b64decode(report["input"]["png_base64"]))
    assert np.abs(seen.astype(int) - colours[0]).max() <= 2  # the first frame, red
    still = encoded_with(
        client, f"/api/models/{spatial_web_model}/encode?format=json", png_of(colour_photo(48, 32))
    )
    assert still["notes"] == []


def test_an_animation_with_a_damaged_later_frame_is_coded_from_its_first_and_said(
    client: httpx.Client, spatial_web_model: str
) -> None:
    """Counting the frames of a GIF cut off inside its third frame must not fail the request
    (Pillow raises IndexError there): the first frame is coded, and the note says 'or more'."""
    rng = np.random.default_rng(8)
    frames = [
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).convert("P") for _ in range(3)
    ]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    cut = buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3]
    report = encoded_with(client, f"/api/models/{spatial_web_model}/encode?format=json", cut)
    assert "This animated GIF has 2 or more frames: only the first frame is coded." in report["notes"]
    seen = read_png(base64.b64decode(report["input"]["png_base64"]))
    np.testing.assert_array_equal(seen, np.asarray(frames[0].convert("RGB")))


def test_api_encode_fits_a_byte_budget_or_a_psnr_and_refuses_bad_targets(client: httpx.Client) -> None:
    """``target_bytes`` / ``target_psnr`` pick the quality by `latentz.targets`, over real HTTP: the
    file is the one the library search gives, at most the budget, and the report says what was met."""
    from latentz import targets

    digit = make_digits(1, seed=5)[0][0][:, :, None]
    coder = runtime.load("mnist-z32")
    image = coder.prepare(png_of(digit)).image
    expected = targets.encode_to_target(coder, image, target_bytes=30)
    answer = client.post(
        "/api/models/mnist-z32/encode?format=json",
        files={"file": ("d.png", png_of(digit))},
        data={"target_bytes": "30"},
    )
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["quality"] == expected.quality and report["met"] is True
    assert report["target"] == {"kind": "bytes", "value": 30} and report["reached"]["bytes"] <= 30
    assert base64.b64decode(report["latentz"]["base64"]) == expected.data
    raw = client.post("/api/encode", files={"file": ("d.png", png_of(digit))}, data={"target_psnr": "20"})
    assert raw.status_code == 200 and raw.headers["x-latentz-quality"].isdigit()
    for bad in ({"target_bytes": "0"}, {"target_psnr": "nan"}, {"target_bytes": "30", "target_psnr": "20"},
                {"target_bytes": "30", "quality": "50"}):  # fmt: skip
        refused = client.post(
            "/api/models/mnist-z32/encode", files={"file": ("d.png", png_of(digit))}, data=bad
        )
        assert refused.status_code in (400, 422) and "error" in refused.json(), bad
