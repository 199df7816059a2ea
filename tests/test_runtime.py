"""The torch-free runtime and the codec commands: round trips, receivers, wrong models, bad files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from latentz import bundle, codec, metrics, runtime
from latentz.cli import app
from latentz.data import load_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits(mnist_path: Path) -> np.ndarray:
    """Held-out digits (the bundles' validation split): images the models never trained on."""
    return load_dataset(f"idx:{mnist_path}", split="val", limit=40).images


def test_compress_then_decompress_matches_quantised_decoding(
    codec_bundles: tuple[Path, Path], digits
) -> None:
    model = runtime.load(codec_bundles[0])
    for quality in (0, 50, 100):
        data = model.compress(digits[0], quality=quality)
        header, latent = model.read(data)
        assert (header.height, header.width, header.channels) == (28, 28, 1)
        assert header.step == codec.step_for_quality(quality)
        np.testing.assert_array_equal(model.decompress(data), model.decode(latent[None])[0])
    # Finer steps cost more payload and bring the decode closer to the unquantised reconstruction.
    reference = model.reconstruct(digits[:10])
    payload, fidelity = {}, {}
    for quality in (0, 100):
        files = [model.compress(digit, quality=quality) for digit in digits[:10]]
        payload[quality] = sum(len(codec.unpack(data)[1]) for data in files)
        fidelity[quality] = metrics.psnr(reference, np.stack([model.decompress(data) for data in files]))
    assert payload[100] > payload[0] and fidelity[100] > fidelity[0]


def test_explicit_steps_and_quality_exclude_each_other(codec_bundles, digits) -> None:
    model = runtime.load(codec_bundles[0])
    assert model.read(model.compress(digits[0], step=1.5))[0].step == 6
    with pytest.raises(ValueError, match="not both"):
        model.compress(digits[0], quality=10, step=1.0)


def test_a_receiver_needs_only_the_decoder_and_the_entropy_model(codec_bundles, digits, tmp_path) -> None:
    sender = runtime.load(codec_bundles[0])
    data = sender.compress(digits[2], quality=80)
    receiver_dir = tmp_path / "receiver" / codec_bundles[0].name
    receiver_dir.mkdir(parents=True)
    for name in (bundle.CONFIG_FILE, bundle.CARD_FILE, bundle.DECODER_FILE, bundle.ENTROPY_MODEL_FILE):
        shutil.copy(codec_bundles[0] / name, receiver_dir / name)
    receiver = runtime.ModelRuntime.load(receiver_dir)
    np.testing.assert_array_equal(receiver.decompress(data), sender.decompress(data))
    with pytest.raises(runtime.ModelRuntimeError, match=r"encoder\.onnx is missing; run `latentz export"):
        receiver.compress(digits[2])


def test_runtime_never_imports_torch(codec_bundles) -> None:
    script = f"""
import sys
import numpy as np
from latentz import runtime
model = runtime.load({str(codec_bundles[0])!r})
image = (np.arange(784, dtype=np.uint8).reshape(28, 28, 1) * 7)
data = model.compress(image, quality=60)
decoded = model.decompress(data)
assert decoded.shape == (28, 28, 1), decoded.shape
# Every module docs/architecture.md marks torch-free: what a receiver or the server may import.
import latentz.config, latentz.bundle, latentz.imaging, latentz.metrics, latentz.data
import latentz.folder_cache, latentz.plots, latentz.codec, latentz.rd, latentz.server.app
print("torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_file_from_another_model_is_refused_naming_both(codec_bundles, digits) -> None:
    first, second = (runtime.load(path) for path in codec_bundles)
    data = first.compress(digits[3], quality=50)
    with pytest.raises(codec.ModelMismatchError) as caught:
        second.decompress(data)
    message = str(caught.value)
    assert first.fingerprint[:8] in message and second.fingerprint[:8] in message and second.name in message


def test_a_refused_file_names_the_installed_model_that_made_it() -> None:
    """Two shipped bundles: the refusal says which installed model to decode with instead."""
    data = runtime.load("mnist-z10").compress(np.zeros((28, 28, 1), dtype=np.uint8), quality=50)
    with pytest.raises(
        codec.ModelMismatchError, match=r"mnist-z32 has fingerprint .*\(that is mnist-z10, installed"
    ):
        runtime.load("mnist-z32").decompress(data)


def test_decode_rejects_non_finite_latents(codec_bundles) -> None:
    model = runtime.load(codec_bundles[0])
    latent = np.zeros((1, 6), dtype=np.float32)
    assert model.decode(latent + 50.0).shape == (1, 28, 28, 1)  # far outside training: still an image
    latent[0, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        model.decode(latent)
    with pytest.raises(ValueError, match="decodes latents shaped"):
        model.decode(np.zeros((1, 7), dtype=np.float32))


def test_prepare_crops_photos_to_a_fixed_size_model_without_squashing(codec_bundles) -> None:
    model = runtime.load(codec_bundles[0])
    wide = np.zeros((30, 90), dtype=np.uint8)
    wide[:, 30:60] = 255  # a white square in the middle of a wide black image
    prepared = model.prepare(wide)
    assert prepared.image.shape == (28, 28, 1) and prepared.original_size == (90, 30)
    assert "centre-cropped 90x30 to 30x30" in prepared.note
    assert prepared.image.min() >= 250  # the centre crop is the white square, not a squashed stripe


# -- the command line -----------------------------------------------------------------------------
def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture()
def digit_files(digits, tmp_path) -> Path:
    folder = tmp_path / "digits"
    (folder / "nested").mkdir(parents=True)
    for index in range(3):
        Image.fromarray(digits[index, :, :, 0], "L").save(folder / f"d{index}.png")
    Image.fromarray(digits[3, :, :, 0], "L").save(folder / "nested" / "d3.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def test_encode_and_decode_one_file(codec_bundles, digit_files, tmp_path) -> None:
    out = tmp_path / "d0.latentz"
    code, stdout, _ = run_cli(
        "encode", str(digit_files / "d0.png"), "-m", str(codec_bundles[0]), "-o", str(out)
    )
    assert code == 0, stdout
    assert "x smaller" in stdout and "PSNR" in stdout
    data = out.read_bytes()
    assert f"-> {len(data):,} B" in stdout
    png = tmp_path / "d0.png"
    code, stdout, stderr = run_cli("decode", str(out), "-o", str(png), "-m", str(codec_bundles[0]))
    assert code == 0, stderr
    decoded = np.asarray(Image.open(png))
    np.testing.assert_array_equal(decoded, runtime.load(codec_bundles[0]).decompress(data)[:, :, 0])


def test_outputs_are_not_overwritten_unless_forced(codec_bundles, digit_files, tmp_path) -> None:
    out = tmp_path / "d0.latentz"
    out.write_bytes(b"precious")
    code, _, stderr = run_cli(
        "encode", str(digit_files / "d0.png"), "-m", str(codec_bundles[0]), "-o", str(out)
    )
    assert code == 2 and "exists; pass --force" in stderr and out.read_bytes() == b"precious"
    code, _, _ = run_cli(
        "encode", str(digit_files / "d0.png"), "-m", str(codec_bundles[0]), "-o", str(out), "--force"
    )
    assert code == 0 and out.read_bytes()[:2] == b"LZ"


def test_folders_encode_and_decode_skipping_bad_files(
    codec_bundles, digit_files, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("LATENTZ_MODELS", str(codec_bundles[0].parent))  # "install" the bundle
    encoded, decoded = tmp_path / "encoded", tmp_path / "decoded"
    code, _, stderr = run_cli("encode", str(digit_files), "-m", str(codec_bundles[0]), "-o", str(encoded))
    assert code == 1  # one input was bad: reported, skipped, and the exit status says so
    assert "broken.png" in stderr and "encoded 4 of 5 files" in stderr
    written = sorted(p.relative_to(encoded).as_posix() for p in encoded.rglob("*.latentz"))
    assert written == ["d0.latentz", "d1.latentz", "d2.latentz", "nested/d3.latentz"]
    (encoded / "junk.latentz").write_bytes(b"GIF89a nonsense")
    code, _, stderr = run_cli("decode", str(encoded), "-o", str(decoded))  # model found by fingerprint
    assert code == 1 and "junk.latentz" in stderr and "magic bytes" in stderr
    assert sorted(p.name for p in decoded.rglob("*.png")) == ["d0.png", "d1.png", "d2.png", "d3.png"]


def test_decode_errors_are_one_clear_line(codec_bundles, digit_files, tmp_path) -> None:
    out = tmp_path / "d0.latentz"
    run_cli("encode", str(digit_files / "d0.png"), "-m", str(codec_bundles[0]), "-o", str(out))
    code, _, stderr = run_cli("decode", str(out), "-o", str(tmp_path / "x.png"), "-m", str(codec_bundles[1]))
    assert code == 2 and "fingerprint" in stderr and "Traceback" not in stderr
    damaged = tmp_path / "damaged.latentz"
    damaged.write_bytes(out.read_bytes()[:-3] + b"\x00\x00\x00")
    code, _, stderr = run_cli(
        "decode", str(damaged), "-o", str(tmp_path / "y.png"), "-m", str(codec_bundles[0])
    )
    assert code == 2 and "checksum mismatch" in stderr
    code, _, stderr = run_cli("decode", str(tmp_path / "missing.latentz"), "-o", str(tmp_path / "z.png"))
    assert code == 2 and "no such file" in stderr
    code, _, stderr = run_cli(
        "encode", str(digit_files / "broken.png"), "-m", str(codec_bundles[0]), "-o", str(out), "--force"
    )
    assert code == 2 and "broken.png: not a recognised image format" in stderr


def test_unknown_fingerprints_say_which_models_are_installed(
    codec_bundles, digit_files, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "d0.latentz"
    run_cli("encode", str(digit_files / "d0.png"), "-m", str(codec_bundles[0]), "-o", str(out))
    monkeypatch.setenv("LATENTZ_MODELS", str(tmp_path / "nowhere"))
    code, _, stderr = run_cli("decode", str(out), "-o", str(tmp_path / "x.png"))
    assert code == 2 and "no installed model has fingerprint" in stderr and "-m MODEL" in stderr


def test_rd_writes_compressai_json_a_plot_and_bd_rates(codec_bundles, mnist_path, tmp_path) -> None:
    out = tmp_path / "rd"
    code, stdout, stderr = run_cli(
        "rd",
        str(codec_bundles[0]),
        "--data",
        f"idx:{mnist_path}",
        "--limit",
        "30",
        "--qualities",
        "0,50,100",
        "-o",
        str(out),
        "--json",
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["n_images"] == 30 and set(summary["codecs"]) == {"latentz", "webp", "avif", "jpeg"}
    latentz = json.loads((out / "latentz.json").read_text())
    assert latentz["name"] == "latentz" and latentz["results"]["quality"] == [0, 50, 100]
    assert {"bytes", "bpp", "psnr", "ssim"} <= set(latentz["results"])
    # The rate is the mean size of the real files: write them the CLI way and compare.
    model = runtime.load(codec_bundles[0])
    images = load_dataset(f"idx:{mnist_path}", split="val", limit=30).images
    files = [model.compress(image, quality=50) for image in images]
    assert latentz["results"]["bytes"][1] == pytest.approx(np.mean([len(f) for f in files]))
    assert latentz["results"]["psnr"][2] >= latentz["results"]["psnr"][0]
    assert (out / "rd.png").stat().st_size > 10_000
    assert set(summary["bd_rate_vs"]) == {"webp", "avif", "jpeg"}


def test_folder_workers_write_exactly_what_one_process_writes(codec_bundles, digit_files, tmp_path) -> None:
    outputs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        code, _, stderr = run_cli(
            "encode", str(digit_files), "-m", str(codec_bundles[0]), "-o", str(out), "--jobs", jobs
        )
        assert code == 1 and "broken.png" in stderr and "encoded 4 of 5 files" in stderr
        outputs[jobs] = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.latentz")}
        decoded = tmp_path / f"decoded{jobs}"
        code, _, stderr = run_cli(
            "decode", str(out), "-o", str(decoded), "-m", str(codec_bundles[0]), "-j", jobs
        )
        assert code == 0, stderr
        outputs[f"png{jobs}"] = {p.name: p.read_bytes() for p in decoded.rglob("*.png")}
    assert len(outputs["1"]) == 4 and outputs["1"] == outputs["2"]
    assert len(outputs["png1"]) == 4 and outputs["png1"] == outputs["png2"]
