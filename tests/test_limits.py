"""The size policy (`latentz.codec.limits`): every declared size is judged before memory follows it.

The memory tests run the real CLI in a child process and read its peak resident size from the
kernel (``ru_maxrss``): resource usage, not wall time.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
from bombs import declared_size_bomb
from conftest import REPO, running_server
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from latentz import codec, runtime
from latentz.codec.limits import DEFAULT_LIMITS, SizeLimits, TooLargeError

PHOTO_MODEL = "red-cars-64"
DIGIT_MODEL = "mnist-z10"
MEMORY_BUDGET_MB = 1536
"""The issue's bound for one encode or decode of any input, by default."""


def peak_of(argv: list[str], cwd: Path | None = None) -> tuple[int, str, float]:
    """Run ``argv`` in a fresh child; (exit code, stderr, the child's peak RSS in MB)."""
    script = textwrap.dedent(
        f"""
        import resource, subprocess, sys
        child = subprocess.run({argv!r}, capture_output=True, text=True)
        sys.stderr.write(child.stderr)
        print(child.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd)
    code, peak = result.stdout.split()
    return int(code), result.stderr, float(peak)


def run_measured(*args: str) -> tuple[int, str, float]:
    """``latentz ARGS`` in a fresh child, with its peak RSS (`peak_of`)."""
    return peak_of([sys.executable, "-m", "latentz", *args])


# -- the policy itself ------------------------------------------------------------------------------
@given(
    width=st.integers(1, 65_535),
    height=st.integers(1, 65_535),
    pixels=st.integers(64, 1 << 24),
    side=st.integers(8, 65_535),
)
def test_coded_size_fits_keeps_the_aspect_and_leaves_small_images_alone(
    width: int, height: int, pixels: int, side: int
) -> None:
    limits = SizeLimits(max_coded_pixels=pixels, max_coded_side=side)
    coded = limits.coded_size(width, height)
    assert limits.fits(*coded)
    if limits.fits(width, height):
        assert coded == (width, height)
    else:
        assert coded[0] <= width and coded[1] <= height
        # aspect kept to within the rounding of the short side
        assert abs(coded[0] * height - coded[1] * width) <= 2 * max(width, height)


def test_the_cli_default_is_the_policys_default() -> None:
    from latentz.commands.codec import DEFAULT_CODED_PIXELS

    assert DEFAULT_LIMITS.max_coded_pixels == DEFAULT_CODED_PIXELS


def test_limits_refuse_nonsense_values() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SizeLimits(max_coded_pixels=0)
    with pytest.raises(ValueError, match="ceiling"):
        SizeLimits(max_coded_pixels=codec.format.MAX_PIXELS + 1)


# -- files that declare more than they hold ---------------------------------------------------------
@pytest.mark.parametrize(("width", "height"), [(5792, 5792), (65535, 510), (4096, 4096)])
def test_a_photo_bomb_is_refused_from_its_header(width: int, height: int) -> None:
    bomb = declared_size_bomb(PHOTO_MODEL, width, height)
    model = runtime.load(PHOTO_MODEL)
    with pytest.raises(TooLargeError, match=r"--max-coded-pixels raises the limit") as refused:
        model.decompress(bomb)
    assert f"{width}x{height}" in str(refused.value)
    assert refused.value.limit == DEFAULT_LIMITS.max_coded_pixels
    with pytest.raises(TooLargeError):
        model.read(bomb)  # the latent is never entropy-decoded either


def test_a_photo_file_within_the_limit_still_decodes() -> None:
    model = runtime.load(PHOTO_MODEL)
    image = model.decompress(declared_size_bomb(PHOTO_MODEL, 300, 200))
    assert image.shape == (200, 300, 3)
    raised = SizeLimits(max_coded_pixels=1000)
    with pytest.raises(TooLargeError, match="1,000 pixels"):
        model.decompress(declared_size_bomb(PHOTO_MODEL, 300, 200), raised)


def test_a_digit_file_must_declare_the_models_own_size() -> None:
    """A vector model decodes 28x28 whatever the header says; a header saying otherwise is refused
    (the server used to answer a 28x28 PNG with X-Latentz-Size 610x65535)."""
    model = runtime.load(DIGIT_MODEL)
    with pytest.raises(codec.ModelMismatchError, match=r"declares a 610x65535 image.*only 28x28"):
        model.decompress(declared_size_bomb(DIGIT_MODEL, 610, 65535))
    assert model.decompress(declared_size_bomb(DIGIT_MODEL, 28, 28)).shape == (28, 28, 1)


def test_decoding_a_bomb_with_the_cli_stays_small_and_says_why(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.latentz"
    bomb.write_bytes(declared_size_bomb(PHOTO_MODEL, 5792, 5792))
    code, stderr, peak_mb = run_measured("decode", str(bomb), "-o", str(tmp_path / "out.png"))
    assert code == 2, stderr
    assert "5792x5792" in stderr and "--max-coded-pixels" in stderr and "Traceback" not in stderr
    assert peak_mb < 400, f"refusing a 22-byte file peaked at {peak_mb:.0f} MB"
    assert not (tmp_path / "out.png").exists()


def test_the_cli_option_raises_the_decode_limit(tmp_path: Path) -> None:
    bomb = tmp_path / "wide.latentz"
    bomb.write_bytes(declared_size_bomb(PHOTO_MODEL, 2400, 2000))  # 4.8 MP: over the default 4.19 MP
    out = tmp_path / "wide.png"
    code, stderr, _ = run_measured("decode", str(bomb), "-o", str(out))
    assert code == 2 and "4,194,304 pixels" in stderr
    code, stderr, peak_mb = run_measured("decode", str(bomb), "-o", str(out), "--max-coded-pixels", "5000000")
    assert code == 0, stderr
    assert Image.open(out).size == (2400, 2000)
    assert peak_mb < MEMORY_BUDGET_MB


# -- images that declare more than they hold --------------------------------------------------------
def huge_jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 40)).save(buffer, format="JPEG", quality=10)
    return buffer.getvalue()


def test_a_huge_photo_is_scaled_down_before_a_spatial_model_codes_it() -> None:
    model = runtime.load(PHOTO_MODEL)
    prepared = model.prepare(huge_jpeg(6000, 6000))
    assert prepared.image.shape == (2048, 2048, 3)
    assert "scaled 6000x6000 down to 2048x2048" in prepared.note
    assert prepared.original_size == (6000, 6000)
    with pytest.raises(TooLargeError, match="use prepare"):
        model.compress(np.zeros((2100, 2100, 3), np.uint8))


def test_encoding_a_tiny_jpeg_that_declares_4000x4000_stays_within_the_budget(tmp_path: Path) -> None:
    source = tmp_path / "bomb.jpg"
    source.write_bytes(huge_jpeg(4000, 4000))
    assert source.stat().st_size < 300_000  # 48 MB of pixels once decoded
    out = tmp_path / "bomb.latentz"
    code, stderr, peak_mb = run_measured("encode", str(source), "-m", PHOTO_MODEL, "-o", str(out))
    assert code == 0, stderr
    header, _ = codec.unpack(out.read_bytes())
    assert (header.width, header.height) == (2048, 2048)
    assert peak_mb < MEMORY_BUDGET_MB, f"encoding peaked at {peak_mb:.0f} MB"


def test_running_out_of_memory_inside_onnx_runtime_is_a_clear_error() -> None:
    script = textwrap.dedent(
        """
        import resource
        import numpy as np
        resource.setrlimit(resource.RLIMIT_AS, (1500 << 20, 1500 << 20))
        from latentz import runtime
        from latentz.codec.limits import SizeLimits
        model = runtime.load("red-cars-64")
        latent = np.zeros((1, *model.config.latent_shape(4500, 4500)), np.float32)
        try:
            model.decode(latent, 4500, 4500, SizeLimits(max_coded_pixels=21_000_000))
        except runtime.OutOfMemoryError as error:
            print("refused:", error)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "refused: not enough memory to run the red-cars-64 decoder" in result.stdout
    assert "Traceback" not in result.stderr and "ONNXRuntimeError" not in result.stderr


# -- the server: its decode limit is its encode limit -----------------------------------------------
def test_the_server_refuses_a_bomb_with_413_and_decodes_what_it_encodes() -> None:
    from latentz.server import Limits, create_app

    limits = Limits(max_spatial_side=256)
    with (
        running_server(create_app(limits, preload=False)) as live,
        httpx.Client(base_url=live.url, timeout=60) as http,
    ):
        for width, height in ((5792, 5792), (257, 100)):
            refused = http.post(
                "/api/decode", files={"file": ("b", declared_size_bomb(PHOTO_MODEL, width, height))}
            )
            assert refused.status_code == 413, refused.text
            body = refused.json()
            assert body["code"] == "too_large" and body["limit"] == 256 * 256
            assert body["error"].endswith("`latentz serve --max-spatial-side` raises the limit")
            read = http.post(
                "/api/read", files={"file": ("b", declared_size_bomb(PHOTO_MODEL, width, height))}
            )
            assert read.status_code == 413
        encoded = http.post(
            f"/api/models/{PHOTO_MODEL}/encode", files={"file": ("p.jpg", huge_jpeg(1000, 600))}
        )
        assert encoded.status_code == 200, encoded.text
        header, _ = codec.unpack(encoded.content)
        assert (header.width, header.height) == (256, 154)
        decoded = http.post("/api/decode", files={"file": ("p.latentz", encoded.content)})
        assert decoded.status_code == 200 and decoded.headers["x-latentz-size"] == "256x154"
        digit_bomb = declared_size_bomb(DIGIT_MODEL, 610, 65535)
        mismatch = http.post("/api/decode", files={"file": ("d", digit_bomb)})
        assert mismatch.status_code == 409 and "only 28x28" in mismatch.json()["error"]


def test_peak_rss_helper_measures_the_child() -> None:
    """The memory assertions above are only as good as the measurement: a child that touches
    600 MB must read as at least that, and an idle one as much less."""
    script = "import numpy as np; a = np.ones(600 << 20, np.uint8); print(int(a.sum()))"
    code, _, peak_mb = peak_of([sys.executable, "-c", script])
    assert code == 0 and peak_mb >= 600
    code, _, idle_mb = peak_of([sys.executable, "-c", "pass"])
    assert code == 0 and idle_mb < 100


def test_a_server_that_runs_out_of_memory_answers_413_and_keeps_serving() -> None:
    """A limit raised past the machine's memory: ONNX Runtime's failed allocation is a JSON 413,
    and the server answers the next request (under an address-space cap, in its own process)."""
    sys.path.insert(0, str(REPO / "bench"))
    from local_server import free_port, running

    port = free_port()
    serve = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from latentz.cli import app\n"
        f"sys.argv = ['latentz', 'serve', '--port', '{port}', '--max-spatial-side', '8000', "
        "'--log-level', 'warning']\n"
        "app()\n"
    )
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-c", serve], f"{url}/api/health", name="serve", start_timeout_s=120):
        bomb = declared_size_bomb(PHOTO_MODEL, 5000, 5000)
        answer = httpx.post(f"{url}/api/decode", files={"file": ("b", bomb)}, timeout=120)
        assert answer.status_code == 413, answer.text
        assert "too large for this server's memory" in answer.json()["error"]
        assert httpx.get(f"{url}/api/health", timeout=30).status_code == 200
        small = httpx.post(
            f"{url}/api/decode", files={"file": ("s", declared_size_bomb(PHOTO_MODEL, 64, 48))}, timeout=60
        )
        assert small.status_code == 200
