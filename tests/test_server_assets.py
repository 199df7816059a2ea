"""What the browser downloads, over real HTTP: compression, caching, versioned URLs, lean networks, /docs.

A first visit to the explorer was 21.2 MB (onnxruntime-web's 14.2 MB wasm and two 3.4 MB networks,
uncompressed) and a repeat visit revalidated or fetched it all again; /docs was blank offline.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from conftest import LiveServer, running_server

from latentz import browser_models
from latentz.bundle import DECODER_FILE, ENCODER_FILE, read_bundle
from latentz.server import create_app
from latentz.server.middleware import SecurityHeaders

SECURITY_HEADERS = {name.decode(): value.decode() for name, value in SecurityHeaders.HEADERS}
IMMUTABLE = "public, max-age=31536000, immutable"


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    # httpx would decode gzip itself: these tests ask for each encoding explicitly and look at the bytes.
    with httpx.Client(base_url=live_server.url, timeout=120) as http:
        yield http


def raw_get(client: httpx.Client, path: str, **headers: str) -> tuple[httpx.Response, bytes]:
    """A GET whose body is returned exactly as it came over the wire (not decompressed)."""
    with client.stream("GET", path, headers=headers) as response:
        body = b"".join(response.iter_raw())
    return response, body


@pytest.fixture(scope="module")
def files(client: httpx.Client, web_model: str) -> dict[str, str]:
    return client.get(f"/api/models/{web_model}").json()["files"]


def ort_urls(client: httpx.Client) -> list[str]:
    """The onnxruntime-web URLs a page uses: its module from the import map, the rest beside it."""
    page = client.get("/explorer").text
    mapping = json.loads(re.search(r'<script type="importmap">(.*?)</script>', page).group(1))
    module = mapping["imports"]["onnxruntime-web"]
    folder = module.rsplit("/", 1)[0]
    return [module, f"{folder}/ort-wasm-simd-threaded.mjs", f"{folder}/ort-wasm-simd-threaded.wasm"]


# -- compression ------------------------------------------------------------------------------------
def test_big_files_travel_gzipped_to_browsers_that_accept_it(
    client: httpx.Client, files: dict[str, str], web_model: str
) -> None:
    module, glue, wasm = ort_urls(client)
    info = read_bundle(web_model)
    cases = {
        wasm: None,
        module: None,
        glue: None,
        files["encoder"]: info.file(ENCODER_FILE).read_bytes(),
        files["decoder"]: info.file(DECODER_FILE).read_bytes(),
        files["entropy_model"]: None,
        "/explorer": None,
        "/static/js/common.js": None,
        "/static/style.css": None,
        "/api/models": None,
    }
    for path, original in cases.items():
        plain, plain_body = raw_get(client, path, **{"Accept-Encoding": "identity"})
        packed, packed_body = raw_get(client, path, **{"Accept-Encoding": "gzip, deflate, br, zstd"})
        assert plain.status_code == packed.status_code == 200, path
        assert "content-encoding" not in plain.headers, path
        assert packed.headers["content-encoding"] == "gzip", path
        assert packed.headers["vary"] == plain.headers["vary"] == "Accept-Encoding", path
        assert int(packed.headers["content-length"]) == len(packed_body) < len(plain_body), path
        assert gzip.decompress(packed_body) == plain_body, path
        # What a page's progress bar needs: the size the decoded stream will have.
        assert int(packed.headers["x-uncompressed-length"]) == len(plain_body), path
        assert packed.headers["etag"] != plain.headers["etag"], path  # two representations, two tags
        if original is not None:
            assert plain_body == original
    wasm_packed = raw_get(client, wasm, **{"Accept-Encoding": "gzip"})[1]
    assert len(wasm_packed) < 0.3 * len(raw_get(client, wasm, **{"Accept-Encoding": "identity"})[1])


def test_gzip_is_only_sent_when_accepted_and_never_for_a_range(client: httpx.Client) -> None:
    wasm = ort_urls(client)[2]
    for refusal in ("identity", "gzip;q=0, deflate", "br", "*;q=0"):
        response, _ = raw_get(client, wasm, **{"Accept-Encoding": refusal})
        assert "content-encoding" not in response.headers, refusal
    for acceptance in ("GZIP", "deflate, gzip;q=0.5", "*"):
        response, _ = raw_get(client, wasm, **{"Accept-Encoding": acceptance})
        assert response.headers["content-encoding"] == "gzip", acceptance
    part, body = raw_get(client, wasm, **{"Accept-Encoding": "gzip", "Range": "bytes=0-3"})
    assert part.status_code == 206 and body == b"\0asm" and "content-encoding" not in part.headers


def test_a_file_is_compressed_once_and_the_same_bytes_are_sent_each_time(client: httpx.Client) -> None:
    from latentz.server import assets

    wasm = ort_urls(client)[2]
    first = raw_get(client, wasm, **{"Accept-Encoding": "gzip"})[1]
    second = raw_get(client, wasm, **{"Accept-Encoding": "gzip"})[1]
    assert first == second
    web_runtime = assets.find_web_runtime()
    path = assets.vendor_file(web_runtime, "ort-wasm-simd-threaded.wasm")
    assert assets.file_payload(path) is assets.file_payload(path)  # made once, kept
    assert assets.file_payload(path).gzip == first


# -- caching -----------------------------------------------------------------------------------------
def test_versioned_urls_are_cached_for_good_and_change_with_the_content(
    client: httpx.Client, files: dict[str, str], web_model: str
) -> None:
    version = client.get("/api/health").json()["web_runtime"]["version"]
    module, glue, wasm = ort_urls(client)
    assert module == f"/vendor/onnxruntime-web/{version}/ort.wasm.min.mjs"
    info = read_bundle(web_model)
    digest = hashlib.sha256(info.file(DECODER_FILE).read_bytes()).hexdigest()[:16]
    assert files["decoder"] == f"/api/models/{web_model}/files/{digest}/decoder.onnx"
    for path in (module, glue, wasm, *files.values()):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == IMMUTABLE, path
        again = client.get(path, headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304 and again.content == b"", path
    # A version this server does not have is refused, never answered with other bytes to cache.
    stale = files["decoder"].replace(digest, "0" * 16)
    assert client.get(stale).status_code == 404
    assert "reload the page" in client.get(stale).json()["error"]
    assert client.get(wasm.replace(f"/{version}/", "/0.0.1/")).status_code == 404


def test_pages_and_unversioned_urls_are_revalidated_with_an_etag(
    client: httpx.Client, web_model: str
) -> None:
    for path in (
        "/",
        "/explorer",
        "/static/js/explorer.js",
        "/api/models",
        f"/api/models/{web_model}",
        "/openapi.json",
        "/vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm",
        f"/api/models/{web_model}/files/decoder.onnx",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == "no-cache", path
        again = client.get(path, headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304 and again.content == b"", path
        listed = client.get(path, headers={"If-None-Match": f'"other", {response.headers["etag"]}'})
        assert listed.status_code == 304, path


# -- lean networks for the browser ---------------------------------------------------------------------
def test_the_model_list_offers_lean_copies_of_the_networks(
    client: httpx.Client, files: dict[str, str], web_model: str
) -> None:
    info = read_bundle(web_model)
    original = {name: info.file(name).read_bytes() for name in (ENCODER_FILE, DECODER_FILE)}
    for key, source, at_most in (
        ("encoder_int8", ENCODER_FILE, 0.3),
        ("decoder_int8", DECODER_FILE, 0.3),
        ("decoder_fp16", DECODER_FILE, 0.52),
    ):
        lean = client.get(files[key]).content
        assert len(lean) <= at_most * len(original[source]), (key, len(lean))
        assert browser_models.describe(lean).startswith(key.split("_")[1])
        session = ort.InferenceSession(lean, providers=["CPUExecutionProvider"])
        reference = ort.InferenceSession(original[source], providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [i.name for i in reference.get_inputs()]
        assert [o.name for o in session.get_outputs()] == [o.name for o in reference.get_outputs()]
    # The bundle itself is untouched: same weights, same fingerprint.
    assert hashlib.sha256(info.file("weights.safetensors").read_bytes()).hexdigest() == info.fingerprint
    assert original[DECODER_FILE] == client.get(files["decoder"]).content


def test_the_receiver_gets_the_float16_decoder_within_a_grey_level(
    client: httpx.Client, files: dict[str, str], web_model: str
) -> None:
    from latentz import runtime

    model = runtime.load(web_model)
    image = np.zeros((28, 28, 1), dtype=np.uint8)
    image[6:22, 12:16] = 255
    blob = model.compress(image, quality=60)
    parsed = client.post("/api/read", files={"file": ("one.latentz", blob)}).json()
    assert parsed["decoder"] == files["decoder_fp16"]
    decoder = ort.InferenceSession(client.get(parsed["decoder"]).content, providers=["CPUExecutionProvider"])
    latent = np.asarray(parsed["latent"], dtype=np.float32).reshape(1, *parsed["latent_shape"])
    (pixels,) = decoder.run(None, {decoder.get_inputs()[0].name: latent})
    shown = np.rint(np.clip(pixels[0, 0], 0, 1) * 255).astype(int)
    assert np.abs(shown - model.decompress(blob)[:, :, 0].astype(int)).max() <= 1


def test_a_lean_copy_that_strays_too_far_is_not_offered(
    monkeypatch: pytest.MonkeyPatch, web_model: str
) -> None:
    """The gate is real: with no tolerance at all, no copy passes, and the pages get the originals."""
    monkeypatch.setattr(browser_models, "TOLERANCE_GREY_LEVELS", {"fp16": 0.0, "int8": 0.0})
    monkeypatch.setattr(browser_models, "CONVERTER_VERSION", -1)  # not the copies other tests made
    with (
        running_server(create_app(preload=False)) as live,
        httpx.Client(base_url=live.url, timeout=120) as http,
    ):
        listed = http.get(f"/api/models/{web_model}").json()["files"]
        assert set(listed) == {"encoder", "decoder", "entropy_model"}
        refused = http.get(f"/api/models/{web_model}/files/decoder.int8.onnx")
        assert refused.status_code == 404 and "grey levels" in refused.json()["error"]


def test_photo_models_offer_only_a_float16_decoder(client: httpx.Client, spatial_web_model: str) -> None:
    listed = client.get(f"/api/models/{spatial_web_model}").json()["files"]
    assert set(listed) == {"encoder", "decoder", "entropy_model", "decoder_fp16"}
    assert client.get(f"/api/models/{spatial_web_model}/files/encoder.int8.onnx").status_code == 404


# -- /docs -----------------------------------------------------------------------------------------------
def test_the_api_docs_are_served_from_this_server_with_the_security_headers(client: httpx.Client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/") for source in sources), sources  # no CDN
    for path in [page.url.path, *sources, "/openapi.json"]:
        response = client.get(path)
        assert response.status_code == 200, path
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value, (path, name)
    assert client.get("/redoc", follow_redirects=False).headers["location"] == "/docs"


def test_docs_without_swagger_ui_say_so_and_link_the_schema(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with (
        running_server(create_app(preload=False, node_modules=tmp_path)) as live,
        httpx.Client(base_url=live.url, timeout=60) as http,
    ):
        page = http.get("/docs")
        assert page.status_code == 200
        assert "swagger-ui-dist is not installed" in page.text and 'href="/openapi.json"' in page.text
        assert str(tmp_path) not in page.text
