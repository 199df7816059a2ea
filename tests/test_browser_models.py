"""latentz.browser_models: the lean copies of a bundle's networks the pages download.

Checked with the ``onnx`` package (which the server itself may not import) and ONNX Runtime,
against the shipped bundles and on the held-out digits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from latentz import browser_models
from latentz.browser_models import LeanModelError, lean_model
from latentz.bundle import DECODER_FILE, ENCODER_FILE, read_bundle


def session(model: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def shipped(web_model: str) -> dict[str, bytes]:
    info = read_bundle(web_model)
    return {"encoder": info.file(ENCODER_FILE).read_bytes(), "decoder": info.file(DECODER_FILE).read_bytes()}


@pytest.mark.parametrize(("precision", "at_most"), [("int8", 0.3), ("fp16", 0.52)])
@pytest.mark.parametrize("network", ["encoder", "decoder"])
def test_a_copy_is_a_valid_smaller_model_with_the_same_interface(
    shipped: dict[str, bytes], network: str, precision: str, at_most: float
) -> None:
    original = shipped[network]
    lean = lean_model(original, precision)  # type: ignore[arg-type]
    assert len(lean) <= at_most * len(original)
    onnx.checker.check_model(onnx.load_from_string(lean), full_check=True)
    copy, reference = session(lean), session(original)
    assert [(i.name, i.shape) for i in copy.get_inputs()] == [
        (i.name, i.shape) for i in reference.get_inputs()
    ]
    assert [o.name for o in copy.get_outputs()] == [o.name for o in reference.get_outputs()]
    assert browser_models.describe(lean).startswith(f"{precision}: ")
    assert browser_models.describe(original) is None
    assert lean_model(original, precision) == lean  # deterministic: its URL version is stable  # type: ignore[arg-type]


def test_int8_stores_the_big_matrices_as_int8_and_the_rest_as_float16(shipped: dict[str, bytes]) -> None:
    original = {
        t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(shipped["decoder"]).graph.initializer
    }
    lean = onnx.load_from_string(lean_model(shipped["decoder"], "int8"))
    stored = {t.name: numpy_helper.to_array(t) for t in lean.graph.initializer}
    for name, values in original.items():
        if values.dtype != np.float32 or values.size < browser_models.MIN_LEAN_VALUES:
            np.testing.assert_array_equal(stored[name], values)  # biases and shapes untouched
        elif values.size >= browser_models.MIN_INT8_VALUES:
            quantized, scale = stored[f"{name}.int8"], stored[f"{name}.scale"]
            assert quantized.dtype == np.int8 and name not in stored
            restored = quantized.astype(np.float32) * scale
            # Per output channel, no value is off by more than half a step (or clipped beyond it).
            assert np.all(
                np.abs(restored - values) <= np.maximum(scale / 2, np.abs(values) - 127 * scale) + 1e-7
            )
        else:
            assert stored[f"{name}.fp16"].dtype == np.float16
            np.testing.assert_array_equal(stored[f"{name}.fp16"], values.astype(np.float16))


def test_the_explorer_copies_keep_the_held_out_digits(shipped: dict[str, bytes], mnist_path: Path) -> None:
    """mnist-z10's 900 held-out digits through the int8 encoder and decoder: the same reconstructions
    to a few grey levels, the same PSNR and held-out ELBO (bench/lean_models.py has the full figures)."""
    from latentz import metrics
    from latentz.data import load_dataset

    if read_bundle("mnist-z10").card["data"] != f"idx:../shared/data/mnist/{mnist_path.name}":
        pytest.skip("mnist-z10 was not trained on the shared MNIST subset")
    images = load_dataset(f"idx:{mnist_path}", split="val").images
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255
    noise = np.random.default_rng(1).standard_normal((len(x), 10)).astype(np.float32)
    figures = {}
    for label, (encoder, decoder) in {
        "original": (shipped["encoder"], shipped["decoder"]),
        "int8": (lean_model(shipped["encoder"], "int8"), lean_model(shipped["decoder"], "int8")),
    }.items():
        encode, decode = session(encoder), session(decoder)
        mean, logvar = encode.run(None, {"image": x})
        shown = np.rint(np.clip(decode.run(None, {"latent": mean})[0], 0, 1) * 255).astype(np.uint8)
        p = np.clip(
            decode.run(None, {"latent": mean + noise * np.exp(0.5 * logvar)})[0].astype(np.float64),
            1e-7,
            1 - 1e-7,
        )
        recon = -(x * np.log(p) + (1 - x) * np.log1p(-p)).reshape(len(x), -1).sum(axis=1)
        kl = 0.5 * (np.exp(logvar) + mean**2 - 1 - logvar).sum(axis=1)
        psnr = np.mean([metrics.psnr(a, b) for a, b in zip(images, shown.transpose(0, 2, 3, 1), strict=True)])
        figures[label] = {"shown": shown.astype(int), "psnr": psnr, "neg_elbo": float((recon + kl).mean())}
    original, lean = figures["original"], figures["int8"]
    assert np.abs(lean["shown"] - original["shown"]).max() <= 6
    assert np.abs(lean["shown"] - original["shown"]).mean() < 0.1
    assert lean["psnr"] == pytest.approx(original["psnr"], abs=0.01)  # 20.244 vs 20.243 dB measured
    assert lean["neg_elbo"] == pytest.approx(original["neg_elbo"], abs=0.05)  # 102.050 vs 102.055 nats


def test_the_check_measures_how_far_a_copy_strays(shipped: dict[str, bytes], web_model: str) -> None:
    shape = read_bundle(web_model).config.latent_shape()
    errors = browser_models.output_error(
        shipped["decoder"],
        shape,
        lean_decoder=lean_model(shipped["decoder"], "int8"),
        lean_encoder=lean_model(shipped["encoder"], "int8"),
        encoder=shipped["encoder"],
    )
    assert 0 < errors["decoder"] <= browser_models.TOLERANCE_GREY_LEVELS["int8"]
    assert 0 < errors["encoder"] <= browser_models.TOLERANCE_GREY_LEVELS["int8"]
    fp16 = browser_models.output_error(
        shipped["decoder"], shape, lean_decoder=lean_model(shipped["decoder"], "fp16")
    )
    assert fp16["decoder"] < 0.5
    assert (
        browser_models.output_error(shipped["decoder"], shape, lean_decoder=shipped["decoder"])["decoder"]
        == 0
    )


def tiny_model(weight_in_float_data: bool, weight_is_input: bool = False) -> bytes:
    """y = x @ W (MatMul) with W of 128x600 values, stored as raw bytes or as float_data."""
    rng = np.random.default_rng(0)
    values = rng.normal(0, 0.1, (128, 600)).astype(np.float32)
    if weight_in_float_data:
        weight = helper.make_tensor("W", TensorProto.FLOAT, values.shape, values.ravel().tolist())
    else:
        weight = numpy_helper.from_array(values, "W")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128])]
    if weight_is_input:  # an initializer that is also an input may be overridden: never rewritten
        inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [128, 600]))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "tiny",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 600])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


@pytest.mark.parametrize("weight_in_float_data", [False, True])
def test_weights_stored_either_way_are_rewritten(weight_in_float_data: bool) -> None:
    original = tiny_model(weight_in_float_data)
    x = np.random.default_rng(1).normal(size=(1, 128)).astype(np.float32)
    (expected,) = session(original).run(None, {"x": x})
    for precision, tolerance in (("int8", 0.02), ("fp16", 2e-3)):
        lean = lean_model(original, precision)  # type: ignore[arg-type]
        assert len(lean) < 0.55 * len(original)
        onnx.checker.check_model(onnx.load_from_string(lean), full_check=True)
        (got,) = session(lean).run(None, {"x": x})
        np.testing.assert_allclose(got, expected, atol=tolerance * np.abs(expected).max())


def test_a_weight_that_is_also_an_input_is_left_alone() -> None:
    original = tiny_model(False, weight_is_input=True)
    lean = lean_model(original, "int8")
    stored = {t.name: t for t in onnx.load_from_string(lean).graph.initializer}
    assert set(stored) == {"W"} and stored["W"].data_type == TensorProto.FLOAT


@pytest.mark.parametrize(
    "data", [b"", b"not an onnx file at all", bytes(range(256)) * 4, b"\x0a\xff\xff\xff\xff\x0f"]
)
def test_what_is_not_an_onnx_model_is_refused(data: bytes) -> None:
    with pytest.raises(LeanModelError):
        lean_model(data, "int8")


def test_an_unknown_precision_is_refused(shipped: dict[str, bytes]) -> None:
    with pytest.raises(ValueError, match="fp16, int8"):
        lean_model(shipped["decoder"], "int4")  # type: ignore[arg-type]


def test_a_decoder_exported_with_a_batch_of_one_is_judged_too() -> None:
    """The rate-distortion codec's g_s takes one latent at a time: the check runs its probes one by
    one (it used to fail, and the receiver fell back to the float32 decoder)."""
    info = read_bundle("red-cars-hp")
    decoder = info.file(DECODER_FILE).read_bytes()
    lean = lean_model(decoder, "fp16")
    errors = browser_models.output_error(decoder, info.config.latent_shape(32, 48), lean_decoder=lean)
    assert 0 < errors["decoder"] <= browser_models.TOLERANCE_GREY_LEVELS["fp16"]
