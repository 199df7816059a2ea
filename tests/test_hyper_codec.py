"""The bit-exact half of the hyperprior codec (latentz.codec.hyper), torch-free: integer CDF tables,
the integer hyper-decoder, range coding of ẑ and y, and the decoder's independence from BLAS."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latentz.codec import hyper, rates

REPO = Path(__file__).resolve().parents[1]
TOTAL = 1 << hyper.PMF_BITS
#: sha256 of the Gaussian tables this version builds; the tables are part of the bitstream, so a
#: change here means a new format version, not a silent rebuild.
GAUSSIAN_TABLES_SHA256 = "7da6c84b42c0895b"


def gaussian_bin(k: np.ndarray, scale: float) -> np.ndarray:
    cdf = lambda v: 0.5 * math.erfc(-v / (scale * math.sqrt(2)))  # noqa: E731
    return np.array([cdf(v + 0.5) - cdf(v - 0.5) for v in k])


@pytest.fixture(scope="module")
def gaussian() -> hyper.IntegerTables:
    return hyper.build_gaussian_tables()


def random_decoder(rng: np.random.Generator, z_channels=8, width=12, latent=6) -> hyper.IntegerHyperDecoder:
    """An integer hyper-decoder with random int8 weights (its structure is what matters here)."""

    def conv(inputs: int, outputs: int, shuffle: bool, shift: int) -> hyper.IntegerConv:
        return hyper.IntegerConv(
            weight=rng.integers(-127, 128, (outputs, inputs, 3, 3)),
            bias=rng.integers(-5000, 5000, outputs),
            multiplier=rng.integers(1 << 14, 1 << 15, outputs),
            shift=np.full(outputs, shift, dtype=np.int64),
            shuffle=shuffle,
        )

    return hyper.IntegerHyperDecoder(
        hidden=(conv(z_channels, 4 * width, True, 22), conv(width, 4 * width, True, 25)),
        final=conv(width, 2 * latent, False, 26),
        mean_scales=rng.uniform(1e-4, 1e-3, latent).astype(np.float32),
    )


# -- tables ---------------------------------------------------------------------------------------
def test_gaussian_tables_are_exact_integer_pmfs_close_to_the_gaussian(gaussian: hyper.IntegerTables) -> None:
    scales = hyper.scale_table()
    assert gaussian.count == hyper.SCALE_LEVELS
    for table, (pmf, scale) in enumerate(zip(gaussian.pmfs, scales, strict=True)):
        assert pmf.dtype == np.int64 and int(pmf.sum()) == TOTAL and pmf.min() >= 1
        symbols = np.arange(len(pmf) - 1) + gaussian.offsets[table]
        assert symbols[0] == -symbols[-1]  # centred on zero
        exact = gaussian_bin(symbols, scale)
        coded = pmf[:-1] / TOTAL
        assert np.all(np.abs(coded - exact) <= (2 + len(pmf) * exact) / TOTAL)
        # What the integer table costs over the true Gaussian, per symbol: under 0.01 bit.
        mass = exact > 0
        kl = float(np.sum(exact[mass] * np.log2(exact[mass] / coded[mass])))
        assert kl < 0.01, (table, kl)
        assert 1.0 - exact.sum() < 2 * hyper.TAIL_MASS  # the explicit range holds all but the tail


def test_gaussian_tables_widen_with_the_scale_and_are_pinned(gaussian: hyper.IntegerTables) -> None:
    radii = -gaussian.offsets
    assert np.all(np.diff(radii) >= 0) and radii[0] == 1
    assert radii[-1] == math.ceil(hyper.SCALE_MAX * 6.1094)  # the 1e-9 two-sided quantile
    assert gaussian.sha256 == hyper.build_gaussian_tables().sha256  # built the same way twice
    assert gaussian.sha256.startswith(GAUSSIAN_TABLES_SHA256)


def test_quantize_pmf_keeps_every_symbol_and_the_escape_codable() -> None:
    counts = hyper.quantize_pmf(np.array([0.0, 1e-15, 0.5, 0.5 - 1e-9]), escape=0.0)
    assert int(counts.sum()) == TOTAL and counts.min() >= 1 and len(counts) == 5
    assert counts[0] == counts[1] == counts[4] == 1
    for bad in (np.array([np.nan, 0.5]), np.zeros(3)):
        with pytest.raises(hyper.HyperCodecError):
            hyper.quantize_pmf(bad, 0.0)


def test_tables_survive_their_arrays_and_refuse_damaged_ones(gaussian: hyper.IntegerTables) -> None:
    again = hyper.IntegerTables.from_arrays(gaussian.to_arrays())
    assert again.sha256 == gaussian.sha256
    arrays = gaussian.to_arrays()
    short = dict(arrays, counts=arrays["counts"][:-1])
    zero = dict(arrays, counts=np.where(np.arange(len(arrays["counts"])) == 3, 0, arrays["counts"]))
    for broken in (short, zero, {"offsets": arrays["offsets"]}):
        with pytest.raises(hyper.HyperCodecError):
            hyper.IntegerTables.from_arrays(broken)


# -- range coding -------------------------------------------------------------------------------
def factorized(channels: int) -> hyper.IntegerTables:
    values = np.arange(-12, 13)
    return hyper.factorized_tables([-12] * channels, [gaussian_bin(values, 2.0 + c) for c in range(channels)])


def test_round_trip_is_exact_and_close_to_the_ideal_length(gaussian: hyper.IntegerTables) -> None:
    rng = np.random.default_rng(1)
    z_tables = factorized(8)
    z = np.round(rng.normal(0, 3, (8, 3, 4))).astype(np.int64)
    indices = rng.integers(0, 40, (16, 9, 14))
    y = np.round(rng.normal(0, hyper.scale_table()[indices])).astype(np.int64)
    payload = hyper.encode_latents(z, y, indices, z_tables, gaussian)
    z_back, y_back = hyper.decode_latents(payload, z.shape, y.shape, z_tables, gaussian, lambda _z: indices)
    assert np.array_equal(z_back, z) and np.array_equal(y_back, y)
    ideal_bits = sum(gaussian.bits(int(i), int(s)) for i, s in zip(indices.ravel(), y.ravel(), strict=True))
    ideal_bits += sum(
        z_tables.bits(c, int(s)) for c, s in zip(np.repeat(range(8), 12), z.ravel(), strict=True)
    )
    assert ideal_bits / 8 - 1 <= len(payload) <= ideal_bits / 8 + 4


def _increment(data: bytes) -> bytes | None:
    """``data`` + 1 as a big-endian number of the same length (None when it would overflow)."""
    value = int.from_bytes(data, "big") + 1
    return value.to_bytes(len(data), "big") if value < 1 << (8 * len(data)) else None


@pytest.mark.parametrize("seed", range(12))
def test_the_payload_is_the_shortest_ending_that_decodes(gaussian: hyper.IntegerTables, seed: int) -> None:
    """Optimal termination, which checks most candidate endings from a checkpoint near the end of
    the stream: the payload decodes, and no one byte shorter ending does (neither the truncation
    nor the truncation rounded up). Half the cases put escapes in the last group coded."""
    rng = np.random.default_rng(seed)
    z_tables = factorized(4)
    z = np.round(rng.normal(0, 3, (4, 2, 3))).astype(np.int64)
    indices = rng.integers(0, 30, (24, 8, 11))
    y = np.round(rng.normal(0, hyper.scale_table()[indices])).astype(np.int64)
    if seed % 2:
        last = indices == indices.max()
        y[last] += rng.choice([-1, 1], int(last.sum())) * 10_000
    payload = hyper.encode_latents(z, y, indices, z_tables, gaussian)

    def decodes(candidate: bytes) -> bool:
        try:
            back = hyper.decode_latents(candidate, z.shape, y.shape, z_tables, gaussian, lambda _z: indices)
        except hyper.HyperCodecError:
            return False
        return np.array_equal(back[0], z) and np.array_equal(back[1], y)

    assert decodes(payload) and payload[-1:] != b"\0"
    assert not any(decodes(c) for c in (payload[:-1], _increment(payload[:-1])) if c is not None)


def test_values_outside_every_table_escape_and_come_back(gaussian: hyper.IntegerTables) -> None:
    z_tables = factorized(2)
    z = np.array([[[0, 13, -13, 500]], [[-(1 << 15), 0, 1, 2]]])
    indices = np.array([[[0, 0, 63, 63, 10]]])
    y = np.array([[[2, -hyper.MAX_SYMBOL, hyper.MAX_SYMBOL, -1563, 7]]])
    payload = hyper.encode_latents(z, y, indices, z_tables, gaussian)
    z_back, y_back = hyper.decode_latents(payload, z.shape, y.shape, z_tables, gaussian, lambda _z: indices)
    assert np.array_equal(z_back, z) and np.array_equal(y_back, y)
    with pytest.raises(ValueError, match="beyond"):
        hyper.encode_latents(z, y + hyper.MAX_SYMBOL, indices, z_tables, gaussian)
    with pytest.raises(ValueError, match="indices outside"):
        hyper.encode_latents(z, y, indices + 1, z_tables, gaussian)


def test_a_flat_latent_costs_almost_nothing(gaussian: hyper.IntegerTables) -> None:
    """Elements the hyperprior is sure of (smallest scale, symbol 0) are nearly free."""
    z_tables = factorized(4)
    z = np.zeros((4, 4, 5), dtype=np.int64)
    y = np.zeros((96, 13, 19), dtype=np.int64)
    payload = hyper.encode_latents(z, y, np.zeros_like(y), z_tables, gaussian)
    z_bytes = sum(z_tables.bits(c, 0) for c in range(4)) * 20 / 8  # 80 hyper-latent values
    assert len(payload) <= z_bytes + 2  # and 23,712 latent elements on top cost under 2 bytes


def test_damaged_payloads_give_a_clear_error_or_other_symbols(gaussian: hyper.IntegerTables) -> None:
    rng = np.random.default_rng(2)
    z_tables = factorized(4)
    decoder = random_decoder(rng, z_channels=4, latent=6)
    indices_for = lambda z: hyper.scale_indices(decoder(z, (7, 9))[0], np.zeros(6, np.int64))  # noqa: E731
    for length in (0, 1, 3, 17, 200):
        try:
            z, y = hyper.decode_latents(
                rng.bytes(length), (4, 2, 3), (6, 7, 9), z_tables, gaussian, indices_for
            )
        except ValueError as error:  # HyperCodecError included; never another exception
            assert str(error)
        else:
            assert z.shape == (4, 2, 3) and y.shape == (6, 7, 9)


# -- the integer hyper-decoder -----------------------------------------------------------------
def reference_accumulate(layer: hyper.IntegerConv, x: np.ndarray) -> np.ndarray:
    """conv + bias in Python integers (object arrays): no float anywhere."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1))).astype(object)
    weight = layer.weight.astype(object)
    out = np.zeros((weight.shape[0], *x.shape[1:]), dtype=object)
    for dy in range(3):
        for dx in range(3):
            window = padded[:, dy : dy + x.shape[1], dx : dx + x.shape[2]]
            out += np.tensordot(weight[:, :, dy, dx], window, axes=(1, 0))
    return (out + layer.bias.astype(object)[:, None, None]).astype(np.int64)


def test_integer_convolution_is_exact_at_the_extremes() -> None:
    rng = np.random.default_rng(3)
    layer = random_decoder(rng).hidden[1]
    for x in (rng.integers(0, 256, (12, 5, 7)), np.full((12, 5, 7), 255)):
        assert np.array_equal(layer.accumulate(x), reference_accumulate(layer, x))
    first = random_decoder(rng).hidden[0]
    x = rng.choice([-hyper.HYPER_INPUT_MAX, hyper.HYPER_INPUT_MAX, 0, 3], (8, 4, 4))
    assert np.array_equal(first.accumulate(x), reference_accumulate(first, x))


def test_integer_convolution_is_exact_either_side_of_the_float32_bound() -> None:
    """`accumulate` sums in float32 when no partial sum can reach 2^24 and in float64 otherwise;
    both sides of that line, with every weight and input at its largest, match Python integers."""
    for row_sum in (((1 << 24) - 1) // 255, ((1 << 24) - 1) // 255 + 1):  # 65,793: float32; 65,794: not
        weight = np.zeros(64 * 9, np.int64)
        full, rest = divmod(row_sum, 127)
        weight[:full], weight[full] = 127, rest
        weight = np.stack([weight, -weight]).reshape(2, 64, 3, 3)
        layer = hyper.IntegerConv(weight, np.array([0, 7]), np.ones(2, int), np.ones(2, int), False)
        x = np.full((64, 3, 3), 255)
        acc = layer.accumulate(x)
        assert acc[0, 1, 1] == row_sum * 255 and acc[1, 1, 1] == 7 - row_sum * 255
        assert np.array_equal(acc, reference_accumulate(layer, x))


def test_requantize_rounds_ties_upward_and_pixel_shuffle_follows_torch() -> None:
    layer = hyper.IntegerConv(
        np.zeros((4, 1, 3, 3), np.int64), np.zeros(4, np.int64), np.full(4, 3), np.full(4, 2), shuffle=True
    )
    acc = np.array([-3, -2, -1, 0, 1, 2, 3, 6]).reshape(1, 1, 8).repeat(4, 0)
    # 3/4 of -3..6: -2.25 -1.5 -0.75 0 0.75 1.5 2.25 4.5 -> ties go up
    assert layer.requantize(acc)[0, 0].tolist() == [-2, -1, -1, 0, 1, 2, 2, 5]
    x = np.arange(8 * 2 * 3).reshape(8, 2, 3)
    shuffled = hyper.pixel_shuffle(x)
    for c, i, j, h, w in np.ndindex(2, 2, 2, 2, 3):  # out[c, 2h+i, 2w+j] = in[4c + 2i + j, h, w]
        assert shuffled[c, 2 * h + i, 2 * w + j] == x[4 * c + 2 * i + j, h, w]


def test_the_hyper_decoder_refuses_what_it_cannot_compute_exactly() -> None:
    rng = np.random.default_rng(4)
    decoder = random_decoder(rng)
    with pytest.raises(hyper.HyperCodecError, match="beyond"):
        decoder(np.full((8, 2, 2), hyper.HYPER_INPUT_MAX + 1), (8, 8))
    with pytest.raises(hyper.HyperCodecError, match="integer"):
        decoder(np.zeros((8, 2, 2)), (8, 8))
    with pytest.raises(hyper.HyperCodecError, match="does not match"):
        decoder(np.zeros((8, 2, 2), np.int64), (9, 8))
    with pytest.raises(hyper.HyperCodecError, match=r"-127\.\.127"):
        hyper.IntegerConv(
            np.full((4, 1, 3, 3), 128), np.zeros(4, int), np.ones(4, int), np.ones(4, int), False
        )
    again = hyper.IntegerHyperDecoder.from_arrays(decoder.to_arrays())
    z = rng.integers(-20, 20, (8, 2, 3))
    assert all(np.array_equal(a, b) for a, b in zip(again(z, (8, 11)), decoder(z, (8, 11)), strict=True))


DETERMINISM_SNIPPET = """
import hashlib, sys
import numpy as np
from latentz.codec import hyper, rates
arrays = dict(np.load(sys.argv[1]))
decoder = hyper.IntegerHyperDecoder.from_arrays({k: v for k, v in arrays.items() if k != "z"})
index, mean = decoder(arrays["z"], (96, 128))
digest = lambda array: hashlib.sha256(array.tobytes()).hexdigest()
print(digest(index), digest(mean), "torch" in sys.modules)
"""


def test_scale_indices_do_not_depend_on_blas_threads(tmp_path: Path) -> None:
    """The same ẑ gives bit-identical indices and means whatever BLAS threads the process is given
    (the float products are exact, and run on one thread anyway), and the decoder never imports
    torch."""
    rng = np.random.default_rng(5)
    decoder = random_decoder(rng, z_channels=16, width=32, latent=24)
    arrays = decoder.to_arrays()
    arrays["z"] = rng.integers(-30, 31, (16, 24, 32))
    np.savez(tmp_path / "net.npz", **arrays)
    outputs = set()
    for threads in ("1", "4"):
        env = dict(
            os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads, PYTHONPATH=str(REPO / "src")
        )
        result = subprocess.run(
            [sys.executable, "-c", DETERMINISM_SNIPPET, str(tmp_path / "net.npz")],
            capture_output=True, text=True, env=env, check=True, timeout=120,
        )  # fmt: skip
        outputs.add(result.stdout.strip())
    index, mean = decoder(arrays["z"], (96, 128))
    here = f"{hashlib.sha256(index.tobytes()).hexdigest()} {hashlib.sha256(mean.tobytes()).hexdigest()} False"
    assert outputs == {here}
    assert len(np.unique(index)) > 10  # the random network does exercise many indices


# -- gains and quantisation ---------------------------------------------------------------------
def test_quality_maps_to_integer_offsets_monotonically() -> None:
    levels = np.array([[9, 6, 12], [4, 4, 4], [-3, 0, -6]])
    offsets = [hyper.gain_offsets_for_quality(levels, q) for q in range(101)]
    assert np.array_equal(offsets[0], levels[0]) and np.array_equal(offsets[50], levels[1])
    assert np.array_equal(offsets[100], levels[2])
    assert all(o.dtype == np.int64 for o in offsets)
    assert np.all(np.diff(np.stack(offsets), axis=0) <= 0)  # finer steps as quality rises
    for bad in (-1, 101, 2.5, True):
        with pytest.raises(ValueError):
            hyper.gain_offsets_for_quality(levels, bad)


def test_a_gain_offset_shifts_the_scale_table_exactly() -> None:
    """Step SCALE_RATIO**k divides every scale by SCALE_RATIO**k: k table entries, clipped."""
    raw = np.array([[[0, 5, 30, 70]]])
    assert hyper.scale_indices(raw, np.array([3])).tolist() == [[[0, 2, 27, 63]]]
    steps = hyper.step_sizes(np.array([3, -2]))
    assert np.allclose(steps, [hyper.SCALE_RATIO**3, hyper.SCALE_RATIO**-2])
    table = hyper.scale_table()
    assert np.isclose(table[30] / hyper.SCALE_RATIO**3, table[27])
    mean = np.array([[[0.25]], [[-1.0]]], dtype=np.float32)
    y = np.array([[[0.25 + 2.5 * steps[0]]], [[-1.0 - 1.2 * steps[1]]]])
    symbols = hyper.quantize(y, mean, steps)
    assert symbols.ravel().tolist() == [3, -1]
    assert np.allclose(hyper.dequantize(symbols, mean, steps).ravel(), [0.25 + 3 * steps[0], -1 - steps[1]])


def test_lambda_for_quality_interpolates_the_trained_lambdas_geometrically() -> None:
    lambdas = [0.002, 0.006, 0.018, 0.054]
    values = [hyper.lambda_for_quality(lambdas, q) for q in range(101)]
    assert np.isclose(values[0], 0.002) and np.isclose(values[100], 0.054)
    assert np.all(np.diff(values) > 0)
    assert np.isclose(values[50], math.sqrt(0.006 * 0.018))  # halfway between the middle two
    assert hyper.lambda_for_quality([0.01], 70) == pytest.approx(0.01)


# -- rate-distortion optimised quantisation -------------------------------------------------------
def test_code_lengths_are_the_tables_bits_and_price_escapes(gaussian: hyper.IntegerTables) -> None:
    rng = np.random.default_rng(5)
    indices = rng.integers(0, hyper.SCALE_LEVELS, 400)
    values = rng.integers(-40, 41, 400)
    lengths = rates.code_lengths(gaussian, indices, values)
    for index, value, length in zip(indices, values, lengths, strict=True):
        entry = value - gaussian.offsets[index]
        if 0 <= entry < gaussian.sizes[index]:
            assert length == pytest.approx(gaussian.bits(int(index), int(value)))
        else:  # the escape entry, a sign bit, the length (alphabet 24) and the Elias-gamma tail
            overshoot = entry - gaussian.sizes[index] if entry > 0 else -1 - entry
            tail = (int(overshoot) + 1).bit_length() - 1
            expected = gaussian.bits(int(index), int(value)) + 1 + math.log2(24) + tail
            assert length == pytest.approx(expected)
    # the range coder spends what the lengths add up to, escapes included (within 1%: its own
    # fixed point gives the rarest entries a little more probability than 1 / 2**20)
    z_tables = factorized(2)
    z = np.zeros((2, 1, 1), np.int64)
    y_indices = np.zeros((1, 20, 20), np.int64)  # the narrowest table: most values here escape
    y = rng.integers(-9, 10, (1, 20, 20))
    payload = hyper.encode_latents(z, y, y_indices, z_tables, gaussian)
    bits = rates.code_lengths(gaussian, y_indices, y).sum() + sum(z_tables.bits(c, 0) for c in range(2))
    assert (rates.code_lengths(gaussian, y_indices, y) > 20).mean() > 0.8
    assert abs(len(payload) - bits / 8) <= 0.01 * bits / 8 + 4


def _costs(symbols, residual, indices, tables, penalty):
    return (
        rates.code_lengths(tables, indices, symbols) + penalty.reshape(-1, 1, 1) * (residual - symbols) ** 2
    )


def test_rd_quantisation_only_trades_bits_for_error_where_it_pays(gaussian: hyper.IntegerTables) -> None:
    rng = np.random.default_rng(9)
    indices = rng.integers(0, 40, (6, 10, 12))
    mean = rng.normal(0, 1, (6, 10, 12)).astype(np.float32)
    steps = hyper.step_sizes(np.array([-3, 0, 2, 5, 0, 1]))
    residual = rng.normal(0, hyper.scale_table()[indices]) * 1.3
    y = mean + residual * steps.reshape(-1, 1, 1)
    rounded = hyper.quantize(y, mean, steps)
    exact = (y.astype(np.float64) - mean) / steps.reshape(-1, 1, 1)

    # a distortion price far above any bit saving: plain rounding
    huge = np.full(6, 1e9)
    assert np.array_equal(rates.quantize_rd(y, mean, steps, indices, gaussian, huge), rounded)

    penalty = np.array([0.0, 0.5, 2.0, 8.0, 32.0, 128.0])
    chosen = rates.quantize_rd(y, mean, steps, indices, gaussian, penalty)
    moved = chosen != rounded
    assert np.array_equal(chosen[moved], (rounded - np.sign(rounded))[moved])  # one step nearer zero
    assert moved.any() and not moved.all()
    costs = _costs(chosen, exact, indices, gaussian, penalty)
    assert np.all(costs <= _costs(rounded, exact, indices, gaussian, penalty))
    assert np.diff([moved[c].mean() for c in range(6)]).max() <= 0  # cheaper error, more moves
    # fewer bits overall, and the symbols decode as any others do
    z_tables = factorized(2)
    z = np.zeros((2, 3, 3), np.int64)
    ours = hyper.encode_latents(z, chosen, indices, z_tables, gaussian)
    plain = hyper.encode_latents(z, rounded, indices, z_tables, gaussian)
    assert len(ours) < len(plain)
    _, back = hyper.decode_latents(ours, z.shape, chosen.shape, z_tables, gaussian, lambda _z: indices)
    assert np.array_equal(back, chosen)
