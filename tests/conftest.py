"""Shared fixtures: small data sets generated on the fly, and the real MNIST subset when present.

Everything generated is tiny (a few dozen images) so tests stay fast on a shared 2-core machine.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentz.data import write_idx

REPO = Path(__file__).resolve().parents[1]
REAL_MNIST = REPO.parent / "shared" / "data" / "mnist" / "mnist9k-images-idx3-ubyte.gz"
IDX_COUNT = 64
TEST_IDX_COUNT = 16


def make_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Digit-like 28x28 uint8 images: a bright stroke (bar or ring) whose shape depends on the label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count)
    rows, cols = np.mgrid[0:28, 0:28]
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    for index, label in enumerate(labels):
        centre_row, centre_col = 14 + rng.integers(-3, 4), 14 + rng.integers(-3, 4)
        if label % 2 == 0:
            radius = 5 + label // 2
            distance = np.hypot(rows - centre_row, cols - centre_col)
            stroke = np.abs(distance - radius) < 1.5
        else:
            stroke = (np.abs(cols - centre_col) < 2) & (np.abs(rows - centre_row) < 4 + label // 2)
        noise = rng.integers(0, 40, size=(28, 28))
        images[index] = np.where(stroke, 255 - noise, noise // 4)
    return images, labels.astype(np.uint8)


@pytest.fixture(scope="session", autouse=True)
def folder_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Photo-folder caches (`latentz.folder_cache`) go to a temporary folder, not ~/.cache."""
    root = tmp_path_factory.mktemp("folder-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LATENTZ_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like the official MNIST release (train + t10k, images + labels, gzipped)."""
    directory = tmp_path_factory.mktemp("idx")
    images, labels = make_digits(IDX_COUNT, seed=1)
    write_idx(directory / "train-images-idx3-ubyte.gz", images)
    write_idx(directory / "train-labels-idx1-ubyte.gz", labels)
    test_images, test_labels = make_digits(TEST_IDX_COUNT, seed=2)
    write_idx(directory / "t10k-images-idx3-ubyte.gz", test_images)
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", test_labels)
    return directory


@pytest.fixture(scope="session")
def idx_path(idx_dir: Path) -> Path:
    """The generated gzipped IDX training images (64 digits of 28x28), with labels beside them."""
    return idx_dir / "train-images-idx3-ubyte.gz"


@pytest.fixture(scope="session")
def idx_plain_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uncompressed IDX images file with no labels file beside it."""
    path = tmp_path_factory.mktemp("idx-plain") / "digits-images-idx3-ubyte"
    write_idx(path, make_digits(20, seed=3)[0])
    return path


def _photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, width, dtype=np.float64)[None, :, None]
    base = np.broadcast_to(gradient, (height, width, 3)) * rng.uniform(0.3, 1.0, size=3)
    noise = rng.normal(0, 10, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


PHOTO_FILES = {
    # name: (width, height, Pillow format)
    "a_wide.jpg": (96, 48, "JPEG"),
    "b_tall.png": (40, 80, "PNG"),
    "c_square.webp": (64, 64, "WEBP"),
    "d_small.bmp": (30, 20, "BMP"),
    "nested/deeper/e_nested.JPEG": (120, 90, "JPEG"),
}


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Photos of mixed formats, sizes and aspect ratios (one nested), one corrupt file and a text file."""
    directory = tmp_path_factory.mktemp("photos")
    for seed, (name, (width, height, fmt)) in enumerate(PHOTO_FILES.items()):
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _photo(width, height, seed).save(path, format=fmt)
    (directory / "z_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (directory / "notes.txt").write_text("not an image")
    return directory


@pytest.fixture(scope="session")
def photo_count() -> int:
    """How many readable photos `photo_dir` holds."""
    return len(PHOTO_FILES)


@pytest.fixture()
def empty_dir(tmp_path: Path) -> Path:
    """An empty folder (no images at all)."""
    directory = tmp_path / "empty"
    directory.mkdir()
    return directory


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    """The real 9,000-digit MNIST subset shipped beside the repository; skips when it is absent."""
    if not REAL_MNIST.is_file():
        pytest.skip(f"real MNIST subset not found at {REAL_MNIST}")
    return REAL_MNIST


@pytest.fixture(scope="session")
def codec_bundles(tmp_path_factory: pytest.TempPathFactory, mnist_path: Path) -> tuple[Path, Path]:
    """Two small real bundles (seeds 0 and 1) trained on 600 real digits: ONNX files, entropy model and all.

    Two, so that a file from one can be offered to the other. Trained once per test session.
    """
    from latentz.config import ModelConfig, TrainConfig
    from latentz.train import train

    model = ModelConfig(arch="conv", image_size=28, channels=1, latent_dim=6, widths=[8, 16], hidden=32)
    folders = []
    for seed in (0, 1):
        config = TrainConfig(
            data=f"idx:{mnist_path}", model=model, epochs=2, batch_size=32, max_train_images=600, seed=seed
        )
        out = tmp_path_factory.mktemp("codec-bundles") / f"digits-seed{seed}"
        folders.append(train(config, out, command=["latentz", "train"], progress=False))
    return folders[0], folders[1]


# -- the web app: a real uvicorn server on a free loopback port -------------------------------------
WEB_PREFERRED_MODEL = "mnist-z10"


class LiveServer:
    """A running latentz server (uvicorn in a thread of this process) and its app, for real HTTP tests."""

    def __init__(self, app, server, thread, url: str) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.server = server
        self.thread = thread
        self.url = url


@contextlib.contextmanager
def running_server(app) -> Iterator[LiveServer]:  # type: ignore[no-untyped-def]
    """Serve ``app`` on 127.0.0.1 (port chosen by the OS) until the block ends, then stop it.

    With the HTTP protocol `latentz serve` uses (header timeout, closing after a refused body).
    """
    import uvicorn

    from latentz.server.protocol import GuardedH11Protocol

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, http=GuardedH11Protocol, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the latentz test server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(app, server, thread, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _web_model_name() -> str | None:
    """The installed, exported vector-latent bundle the web tests use (mnist-z10 when present)."""
    from latentz.bundle import DECODER_FILE, ENCODER_FILE, ENTROPY_MODEL_FILE, list_bundles, read_bundle

    usable = []
    for path in list_bundles():
        if not all((path / name).is_file() for name in (ENCODER_FILE, DECODER_FILE, ENTROPY_MODEL_FILE)):
            continue
        info = read_bundle(path)
        if not info.config.fully_convolutional and "latent_stats" in info.card:
            usable.append(info.name)
    if WEB_PREFERRED_MODEL in usable:
        return WEB_PREFERRED_MODEL
    return next((name for name in usable if "mnist" in name and "fashion" not in name), None) or (
        usable[0] if usable else None
    )


@pytest.fixture(scope="session")
def web_model() -> str:
    """Name of the installed bundle the server and browser tests drive (never trained by the tests)."""
    name = _web_model_name()
    if name is None:
        pytest.skip("no installed, exported vector-latent bundle (mnist-z10 ships in src/latentz/bundles)")
    return name


WEB_TEST_LIMITS = {
    "max_upload_bytes": 1024 * 1024,
    "max_pixels": 4_000_000,
    "max_samples": 16,
    "max_interpolation_steps": 12,
    "max_concurrent_jobs": 2,
    "queue_timeout_s": 20.0,
}
"""Small limits, so every refusal can be provoked over HTTP with a small request."""


@pytest.fixture(scope="session")
def live_server(web_model: str) -> Iterator[LiveServer]:
    """The real app with every installed model preloaded, shared by the server and browser tests."""
    from latentz.server import Limits, create_app

    with running_server(create_app(Limits(**WEB_TEST_LIMITS))) as live:
        yield live


@pytest.fixture(scope="session")
def spatial_web_model() -> str:
    """An installed, exported fully convolutional (photo) bundle; skips until one is installed."""
    from latentz.bundle import DECODER_FILE, ENCODER_FILE, ENTROPY_MODEL_FILE, list_bundles, read_bundle

    exported = (ENCODER_FILE, DECODER_FILE, ENTROPY_MODEL_FILE)
    for path in list_bundles():
        if all((path / name).is_file() for name in exported) and read_bundle(path).config.fully_convolutional:
            return path.name
    pytest.skip("no installed, exported spatial bundle (red-cars-64 ships in src/latentz/bundles)")
