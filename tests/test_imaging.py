"""imaging: safe decoding of untrusted images, aspect-preserving resize, layout conversions."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from latentz import imaging, metrics
from latentz.imaging import ImageError


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG with a valid header claiming ``width`` x ``height`` pixels but no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def halves(width: int, height: int, left: tuple, right: tuple) -> Image.Image:
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = left
    array[:, width // 2 :] = right
    return Image.fromarray(array, "RGB")


RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


# -- open_image ---------------------------------------------------------------------------------
def test_opens_paths_and_bytes_alike(tmp_path: Path) -> None:
    picture = halves(20, 10, RED, BLUE)
    path = tmp_path / "p.png"
    picture.save(path)
    from_path = imaging.open_image(path)
    from_bytes = imaging.open_image(path.read_bytes())
    assert from_path.size == from_bytes.size == (20, 10)
    assert np.array_equal(np.asarray(from_path), np.asarray(picture))
    assert np.array_equal(np.asarray(from_bytes), np.asarray(picture))


def test_format_is_sniffed_from_content_not_the_name(tmp_path: Path) -> None:
    path = tmp_path / "actually-a-png.jpg"
    path.write_bytes(encoded(halves(8, 8, RED, BLUE), "PNG"))
    image = imaging.open_image(path)
    assert image.format == "PNG"
    assert tuple(np.asarray(image)[0, 0]) == RED  # lossless: it really was read as PNG


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "not a recognised image"),
        (b"hello, I am text", "not a recognised image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "not a recognised image"),
        (b"BM" + b"\x00" * 40, "corrupt or truncated"),
    ],
)
def test_garbage_bytes_are_an_image_error(payload: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        imaging.open_image(payload)


def test_truncated_image_is_an_image_error() -> None:
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for fmt in ("PNG", "JPEG"):
        data = encoded(noisy, fmt)
        with pytest.raises(ImageError, match="corrupt or truncated"):
            imaging.open_image(data[: len(data) // 2])


def test_missing_file_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        imaging.open_image(tmp_path / "nope.png")


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # 100k x 100k pixels would need 30 GB; the file has no pixel data, so only a header check
    # (not a decode attempt, which would report truncation) can produce this message.
    with pytest.raises(ImageError, match=r"refused before decoding"):
        imaging.open_image(png_header_only(100_000, 100_000))
    with pytest.raises(ImageError, match=r"10,000 allowed"):
        imaging.open_image(png_header_only(200, 200), max_pixels=10_000)


def test_max_pixels_applies_to_real_images() -> None:
    data = encoded(halves(100, 100, RED, BLUE), "PNG")
    assert imaging.open_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageError, match="more than the 9,999 allowed"):
        imaging.open_image(data, max_pixels=9_999)


def test_exif_orientation_is_applied() -> None:
    picture = halves(40, 20, RED, BLUE)  # wide: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    upright = imaging.open_image(encoded(picture, "JPEG", exif=exif, quality=95))
    assert upright.size == (20, 40)
    array = np.asarray(upright).astype(int)
    assert array[5, 10, 0] > 200 and array[5, 10, 2] < 60  # red ends up on top
    assert array[35, 10, 2] > 200 and array[35, 10, 0] < 60  # blue at the bottom


# -- to_array -----------------------------------------------------------------------------------
def test_resize_keeps_aspect_and_centre_crops_a_wide_image() -> None:
    # 200x100: green 50-pixel bands on both ends lie entirely outside the centred 100x100 square.
    array = np.zeros((100, 200, 3), dtype=np.uint8)
    array[:, :50] = GREEN
    array[:, 50:100] = RED
    array[:, 100:150] = BLUE
    array[:, 150:] = GREEN
    out = imaging.to_array(Image.fromarray(array), size=32, channels=3)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[:, 2:14].reshape(-1, 3).mean(axis=0) == pytest.approx(RED, abs=6)
    assert out[:, 18:30].reshape(-1, 3).mean(axis=0) == pytest.approx(BLUE, abs=6)
    assert out[:, :, 1].max() < 40  # no green survived: it was cropped, not squashed in


def test_resize_keeps_aspect_of_a_tall_image() -> None:
    array = np.zeros((90, 30, 3), dtype=np.uint8)
    array[:30] = GREEN
    array[30:60] = RED
    array[60:] = GREEN
    out = imaging.to_array(Image.fromarray(array), size=15, channels=3)
    assert out.shape == (15, 15, 3)
    assert out[2:13].reshape(-1, 3).mean(axis=0) == pytest.approx(RED, abs=6)


def test_upscaling_and_native_size() -> None:
    small = halves(10, 6, RED, BLUE)
    assert imaging.to_array(small, size=24, channels=3).shape == (24, 24, 3)
    assert imaging.to_array(small, size=None, channels=3).shape == (6, 10, 3)


def test_grey_conversion_and_alpha_flattens_on_white() -> None:
    rgba = np.zeros((12, 12, 4), dtype=np.uint8)
    rgba[:, :6] = (0, 0, 0, 255)  # opaque black
    rgba[:, 6:] = (0, 0, 0, 0)  # fully transparent
    grey = imaging.to_array(Image.fromarray(rgba, "RGBA"), size=None, channels=1)
    assert grey.shape == (12, 12, 1)
    assert grey[:, :6].max() == 0 and grey[:, 6:].min() == 255
    rgb = imaging.to_array(Image.fromarray(rgba, "RGBA"), size=None, channels=3)
    assert rgb.shape == (12, 12, 3) and rgb[:, 6:].min() == 255


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    image = Image.fromarray(np.full((12, 12), 65535, dtype=np.uint16))
    assert imaging.to_array(image, size=None, channels=1).min() >= 254


def test_bad_channel_count_is_refused() -> None:
    with pytest.raises(ImageError, match="channels"):
        imaging.to_array(halves(4, 4, RED, BLUE), size=None, channels=2)


def test_load_array_combines_open_and_convert() -> None:
    data = encoded(halves(64, 32, RED, BLUE), "PNG")
    assert imaging.load_array(data, 16, 1).shape == (16, 16, 1)


# -- layout conversions and encoders ----------------------------------------------------------
def test_float_and_uint8_layouts_round_trip() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    floats = imaging.to_float_nchw(images)
    assert floats.shape == (3, 3, 5, 7) and floats.dtype == np.float32
    assert floats.min() >= 0 and floats.max() <= 1
    assert floats[1, 2, 4, 6] == pytest.approx(images[1, 4, 6, 2] / 255)
    assert np.array_equal(imaging.to_uint8_nhwc(floats), images)
    assert imaging.to_float_nchw(images[0]).shape == (1, 3, 5, 7)


def test_to_uint8_rounds_clips_and_zeroes_nan() -> None:
    values = np.array([-0.5, 0.0, 0.5 / 255, 1.4 / 255, 1.6 / 255, 1.0, 7.0, np.nan], dtype=np.float32)
    out = imaging.to_uint8_nhwc(values.reshape(1, 1, 1, -1))
    assert out.shape == (1, 1, 8, 1)
    assert out.ravel().tolist() == [0, 0, 0, 1, 2, 255, 255, 0]


def test_to_float_refuses_non_uint8() -> None:
    with pytest.raises(ImageError, match="uint8"):
        imaging.to_float_nchw(np.zeros((1, 2, 2, 1), dtype=np.float32))


@pytest.mark.parametrize("channels", [1, 3])
def test_png_bytes_are_lossless(channels: int) -> None:
    image = np.random.default_rng(channels).integers(0, 256, (9, 11, channels), dtype=np.uint8)
    decoded = Image.open(io.BytesIO(imaging.png_bytes(image)))
    assert decoded.mode == ("L" if channels == 1 else "RGB")
    assert np.array_equal(np.asarray(decoded).reshape(image.shape), image)


def test_encode_with_jpeg_and_webp() -> None:
    rows, cols = np.mgrid[0:48, 0:48]
    image = np.stack([rows * 5, cols * 5, (rows + cols) * 2], axis=-1).astype(np.uint8)
    image[::4] = 200  # some detail so low quality visibly costs fewer bytes
    for fmt, magic in (("jpeg", b"\xff\xd8"), ("webp", b"RIFF")):
        low, high = imaging.encode_with(image, fmt, 10), imaging.encode_with(image, fmt, 90)
        assert low.startswith(magic) and high.startswith(magic)
        assert len(low) < len(high)
        decoded = imaging.load_array(high, None, 3)
        assert decoded.shape == image.shape
        assert np.abs(decoded.astype(int) - image).mean() < 20
    with pytest.raises(ImageError, match="unknown format"):
        imaging.encode_with(image, "gif", 50)
    with pytest.raises(ImageError, match="quality"):
        imaging.encode_with(image, "jpeg", 101)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow cannot write AVIF")
@pytest.mark.parametrize("channels", [1, 3])
def test_encode_with_avif(channels: int) -> None:
    """AVIF at speed 4 and one thread: smaller at low quality, the same bytes every time, grey stays grey."""
    rows, cols = np.mgrid[0:40, 0:56]
    image = np.stack([rows * 5, cols * 4, (rows + cols) * 2], axis=-1).astype(np.uint8)[:, :, :channels]
    image[::4] = 200
    low, high = imaging.encode_with(image, "avif", 10), imaging.encode_with(image, "avif", 90)
    assert low[4:12] == b"ftypavif" and high[4:12] == b"ftypavif"
    assert len(low) < len(high)
    assert imaging.encode_with(image, "AVIF", 90) == high
    decoded = Image.open(io.BytesIO(high))
    assert decoded.format == "AVIF" and decoded.mode == ("L" if channels == 1 else "RGB")
    assert imaging.decode_baseline(high, channels).shape == image.shape
    psnr_low = metrics.psnr(image, imaging.decode_baseline(low, channels))
    assert metrics.psnr(image, imaging.decode_baseline(high, channels)) > max(psnr_low + 1.0, 20.0)
    with pytest.raises(ImageError, match="quality"):
        imaging.encode_with(image, "avif", -1)


def test_grid_places_images_row_by_row() -> None:
    images = np.stack([np.full((4, 5, 1), value, dtype=np.uint8) for value in (10, 20, 30)])
    canvas = imaging.grid(images, columns=2, pad=1)
    assert canvas.shape == (2 * 4 + 3, 2 * 5 + 3, 1)
    assert canvas[1, 1, 0] == 10 and canvas[1, 7, 0] == 20 and canvas[6, 1, 0] == 30
    assert canvas[6, 7, 0] == 255 and canvas[0, 0, 0] == 255  # empty cell and padding are white


def test_webp_within_a_budget_is_the_highest_quality_that_fits() -> None:
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    budget = len(imaging.encode_with(image, "webp", 40)) + 1
    quality, data, fits = imaging.webp_within(image, budget)
    assert fits and len(data) <= budget and data == imaging.encode_with(image, "webp", quality)
    assert quality >= 40 and len(imaging.encode_with(image, "webp", quality + 1)) > budget
    assert imaging.webp_within(image, 10) == (0, imaging.encode_with(image, "webp", 0), False)
