"""Rate targets (`latentz.targets`): the quality search on the real bundled digit codec, held-out digits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from latentz import codec, metrics, runtime
from latentz.data import load_dataset
from latentz.targets import encode_to_target

MODEL = "mnist-z32"


@pytest.fixture(scope="module")
def model() -> runtime.ModelRuntime:
    return runtime.load(MODEL)


@pytest.fixture(scope="module")
def digit(mnist_path: Path) -> np.ndarray:
    """A held-out digit (the validation split): one the bundled model never trained on."""
    return load_dataset(f"idx:{mnist_path}", split="val", limit=3).images[1]


class Counting:
    """The model, counting the encodes the search makes."""

    def __init__(self, model: runtime.ModelRuntime) -> None:
        self.model, self.qualities = model, []

    def compress(self, image: np.ndarray, quality: int) -> bytes:
        self.qualities.append(quality)
        return self.model.compress(image, quality=quality)

    def decompress(self, data: bytes) -> np.ndarray:
        return self.model.decompress(data)


def test_byte_target_picks_the_highest_quality_that_fits(model, digit) -> None:
    sizes = {q: len(model.compress(digit, quality=q)) for q in range(101)}
    budget = (sizes[0] + sizes[100]) // 2
    counting = Counting(model)
    result = encode_to_target(counting, digit, target_bytes=budget)
    assert result.met and result.bytes == len(result.data) <= budget
    assert result.quality == max(q for q, size in sizes.items() if size <= budget)
    assert len(counting.qualities) <= 9  # bisection, not a sweep
    assert result.data == model.compress(digit, quality=result.quality)
    assert model.read(result.data)[0].step == codec.step_for_quality(result.quality)
    assert result.psnr == pytest.approx(metrics.psnr(digit, model.decompress(result.data)))
    assert f"quality {result.quality}: {result.bytes:,} bytes (target {budget:,})" in result.message


def test_psnr_target_picks_the_lowest_quality_that_reaches_it(model, digit) -> None:
    psnrs = {q: metrics.psnr(digit, model.decompress(model.compress(digit, quality=q))) for q in (0, 100)}
    goal = (psnrs[0] + psnrs[100]) / 2
    result = encode_to_target(model, digit, target_psnr=goal)
    assert result.met and result.psnr >= goal and result.target == "psnr"
    below = metrics.psnr(digit, model.decompress(model.compress(digit, quality=result.quality - 1)))
    assert below < goal  # one quality lower misses it
    assert result.record()["quality"] == result.quality and result.record()["met"] is True


def test_targets_that_cannot_be_met_say_so(model, digit) -> None:
    small = encode_to_target(model, digit, target_bytes=1)
    assert (small.quality, small.met) == (0, False)
    assert small.data == model.compress(digit, quality=0)
    assert "even the lowest quality is bigger" in small.message
    sharp = encode_to_target(model, digit, target_psnr=99.0)
    assert (sharp.quality, sharp.met) == (100, False)
    assert "even the highest quality misses" in sharp.message


def test_a_rate_that_is_not_monotonic_never_reports_a_missed_target_as_met(digit) -> None:
    class Bumpy:
        """Sizes grow with quality except a spike at 50, where bisection looks first."""

        def compress(self, image: np.ndarray, quality: int) -> bytes:
            return bytes(1000 if quality == 50 else 10 + quality)

        def decompress(self, data: bytes) -> np.ndarray:
            return np.zeros_like(digit)

    result = encode_to_target(Bumpy(), digit, target_bytes=100)
    assert result.met and result.bytes <= 100


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"target_bytes": 100, "target_psnr": 20.0},
        {"target_bytes": 0},
        {"target_bytes": -5},
        {"target_bytes": 10.5},
        {"target_psnr": math.nan},
        {"target_psnr": -1.0},
        {"target_psnr": math.inf},
    ],
)
def test_exactly_one_valid_target(model, digit, kwargs) -> None:
    with pytest.raises(codec.CodecSettingError):
        encode_to_target(model, digit, **kwargs)
