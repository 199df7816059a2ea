"""Lean copies of a bundle's ONNX networks for the browser: the same graph with smaller weights.

A bundle's ``encoder.onnx`` and ``decoder.onnx`` hold float32 weights, 3.4 MB each for ``mnist-z10``
(almost all of it one fully connected layer) for a 28x28 image, and the pages download them. So the
server offers copies that store the weights in fewer bytes and restore them to float32 inside the
graph:

- ``fp16``: every float32 weight of at least `MIN_LEAN_VALUES` values is stored as float16 and
  turned back into float32 by a ``Cast`` node: half the size; decoded pixels stay within one grey
  level of the original's.
- ``int8``: each matrix of at least `MIN_INT8_VALUES` values is stored as int8 with one float32
  scale per output channel (the clipping that minimises the rounding error), restored by ``Cast``
  and ``Mul``; the smaller weights as in ``fp16``: a quarter of the size.

ONNX Runtime folds those constant nodes when it creates the session, so a copy runs in float32 as
fast as the original. The bundle's own files, weights and fingerprint are never touched: a copy is
a function of the exported file alone (and `CONVERTER_VERSION`), so the server makes it on demand.
`output_error` measures how far a copy's outputs are from the original's; the server offers a copy
only within `TOLERANCE_GREY_LEVELS`.

The copies are made by editing ONNX's protobuf wire format directly, not with the ``onnx`` package:
the server must not import it (pyproject.toml's import contract), and the edit needs only a few
fields of ``ModelProto``, ``GraphProto``, ``NodeProto`` and ``TensorProto``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Precision = Literal["fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp16", "int8")
CONVERTER_VERSION = 1
"""Part of every copy's version (and so of its URL): bump it when a copy of the same file changes."""
MIN_LEAN_VALUES = 1024
"""Smaller float32 tensors (biases, shapes) stay as they are: they weigh nothing."""
MIN_INT8_VALUES = 65_536
"""Matrices this big are where the bytes are (803k values in mnist-z10's); smaller ones (the
convolutions) go to float16, which keeps the pixels within 3-4 grey levels instead of 11."""
CLIP_RATIOS = np.linspace(0.7, 1.0, 16)
"""Per output channel, the int8 scale is peak * ratio / 127 for the ratio with the least squared error."""
TOLERANCE_GREY_LEVELS: dict[Precision, float] = {"fp16": 1.0, "int8": 4.0}
"""The largest pixel difference from the original's output (0..255 scale) a copy may show on the
probes of `output_error`; measured on mnist-z10: 0.12 for fp16, 2.0 for int8."""
METADATA_KEY = "latentz.browser_copy"

# ONNX's TensorProto.DataType values and the field numbers used here (onnx/onnx.proto).
FLOAT, INT8, FLOAT16 = 1, 3, 10
ATTRIBUTE_INT = 2
MODEL_GRAPH, MODEL_OPSET, MODEL_METADATA = 7, 8, 14
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT = 1, 5, 11
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP, NODE_ATTRIBUTE = 1, 2, 3, 4, 5
ATTR_NAME, ATTR_INT, ATTR_TYPE = 1, 3, 20
TENSOR_DIMS, TENSOR_TYPE, TENSOR_SEGMENT, TENSOR_FLOATS = 1, 2, 3, 4
TENSOR_NAME, TENSOR_RAW, TENSOR_EXTERNAL, TENSOR_LOCATION = 8, 9, 13, 14
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class LeanModelError(ValueError):
    """The file is not an ONNX model this module can rewrite (the original is served instead)."""


# -- protobuf wire format ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Field:
    number: int
    wire: int
    value: Any  # int for varints, bytes for everything else
    raw: bytes  # the whole field as it was encoded (key included), to copy untouched fields


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise LeanModelError("truncated or malformed protobuf varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _fields(data: bytes) -> Iterator[_Field]:
    position = 0
    while position < len(data):
        start = position
        key, position = _read_varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, position = _read_varint(data, position)
        elif wire in (FIXED64, FIXED32):
            width = 8 if wire == FIXED64 else 4
            value, position = data[position : position + width], position + width
        elif wire == LENGTH:
            length, position = _read_varint(data, position)
            value, position = data[position : position + length], position + length
        else:
            raise LeanModelError(f"unsupported protobuf wire type {wire}")
        if position > len(data):
            raise LeanModelError("truncated protobuf message")
        yield _Field(number, wire, value, data[start:position])


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _bytes_field(number: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | LENGTH) + _varint(len(data)) + data


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3 | VARINT) + _varint(value)


def _tensor(name: str, array: np.ndarray, data_type: int) -> bytes:
    dims = b"".join(_int_field(TENSOR_DIMS, size) for size in array.shape)
    body = dims + _int_field(TENSOR_TYPE, data_type) + _bytes_field(TENSOR_NAME, name)
    little_endian = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return body + _bytes_field(TENSOR_RAW, little_endian.tobytes())


def _node(op_type: str, inputs: list[str], output: str, name: str, to_type: int | None = None) -> bytes:
    body = b"".join(_bytes_field(NODE_INPUT, each) for each in inputs)
    body += _bytes_field(NODE_OUTPUT, output) + _bytes_field(NODE_NAME, name) + _bytes_field(NODE_OP, op_type)
    if to_type is not None:
        attribute = _bytes_field(ATTR_NAME, "to") + _int_field(ATTR_INT, to_type)
        body += _bytes_field(NODE_ATTRIBUTE, attribute + _int_field(ATTR_TYPE, ATTRIBUTE_INT))
    return body


# -- what the graph holds ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Use:
    op_type: str
    index: int
    transposed_b: bool


def _uses(graph: bytes) -> tuple[dict[str, list[_Use]], set[str], set[str]]:
    """Which node inputs each name feeds, every name the graph defines or reads, and its inputs."""
    uses: dict[str, list[_Use]] = {}
    names: set[str] = set()
    inputs_of_graph: set[str] = set()
    for field in _fields(graph):
        if field.number == GRAPH_INPUT and field.wire == LENGTH:
            inputs_of_graph |= {item.value.decode() for item in _fields(field.value) if item.number == 1}
        if field.number != GRAPH_NODE or field.wire != LENGTH:
            continue
        inputs, op_type, transposed_b = [], "", False
        for item in _fields(field.value):
            if item.number == NODE_INPUT:
                inputs.append(item.value.decode())
            elif item.number == NODE_OUTPUT:
                names.add(item.value.decode())
            elif item.number == NODE_OP:
                op_type = item.value.decode()
            elif item.number == NODE_ATTRIBUTE:
                attribute = {part.number: part.value for part in _fields(item.value)}
                if attribute.get(ATTR_NAME) == b"transB":
                    transposed_b = bool(attribute.get(ATTR_INT, 0))
        for index, name in enumerate(inputs):
            uses.setdefault(name, []).append(_Use(op_type, index, transposed_b))
            names.add(name)
    return uses, names | inputs_of_graph, inputs_of_graph


def _output_axis(uses: list[_Use], ndim: int) -> int | None:
    """The weight's output-channel axis, if every use is a known weight input (else no int8)."""
    axes = set()
    for use in uses:
        if use.index != 1:
            return None
        if use.op_type == "Gemm" and ndim == 2:
            axes.add(0 if use.transposed_b else 1)
        elif use.op_type == "MatMul" and ndim == 2:
            axes.add(1)
        elif use.op_type == "Conv":
            axes.add(0)
        elif use.op_type == "ConvTranspose" and ndim >= 2:
            axes.add(1)
        else:
            return None
    return axes.pop() if len(axes) == 1 else None


def _float_values(tensor: dict[int, list[_Field]]) -> np.ndarray | None:
    """A plain float32 initializer's values in its shape; None for anything else."""
    data_type = tensor.get(TENSOR_TYPE, [None])[0]
    if data_type is None or data_type.value != FLOAT or TENSOR_EXTERNAL in tensor or TENSOR_SEGMENT in tensor:
        return None
    if tensor.get(TENSOR_LOCATION) and tensor[TENSOR_LOCATION][0].value != 0:
        return None
    dims: list[int] = []
    for field in tensor.get(TENSOR_DIMS, []):
        if field.wire == VARINT:
            dims.append(field.value)
        else:  # packed
            position = 0
            while position < len(field.value):
                size, position = _read_varint(field.value, position)
                dims.append(size)
    if TENSOR_RAW in tensor:
        values = np.frombuffer(tensor[TENSOR_RAW][0].value, dtype="<f4")
    else:
        # float_data: packed (one length-delimited field) or one fixed32 field per value
        values = np.frombuffer(b"".join(field.value for field in tensor.get(TENSOR_FLOATS, [])), dtype="<f4")
    if values.size != int(np.prod(dims, dtype=np.int64)):
        return None
    return values.astype(np.float32).reshape(dims)


def _quantize(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 values and float32 scales (shaped to broadcast) with the least squared error per channel."""
    channels = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    peak = np.abs(channels).max(axis=1, keepdims=True)
    best_scale = np.where(peak > 0, peak / 127, 1).astype(np.float32)
    best_error = np.full_like(peak, np.inf)
    for ratio in CLIP_RATIOS:
        scale = np.where(peak > 0, peak * np.float32(ratio) / 127, 1).astype(np.float32)
        restored = np.clip(np.rint(channels / scale), -127, 127) * scale
        error = ((restored - channels) ** 2).sum(axis=1, keepdims=True)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best_scale = np.where(better, scale, best_scale)
    quantized = np.clip(np.rint(channels / best_scale), -127, 127).astype(np.int8)
    moved_shape = (values.shape[axis], *np.delete(values.shape, axis))
    shape = [1] * values.ndim
    shape[axis] = values.shape[axis]
    return np.moveaxis(quantized.reshape(moved_shape), 0, axis), best_scale.reshape(shape)


# -- the copy -------------------------------------------------------------------------------------
def lean_model(model: bytes, precision: Precision) -> bytes:
    """A copy of the ONNX ``model`` whose large float32 weights are stored in ``precision``.

    Raises `LeanModelError` for bytes that are not an ONNX model this module can read.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    try:
        return _lean_model(model, precision)
    except (UnicodeDecodeError, IndexError, KeyError) as error:  # names that are not text, broken fields
        raise LeanModelError(f"not an ONNX model this module can rewrite: {error}") from None


def _rewrite_weight(
    name: str, values: np.ndarray, axis: int | None, precision: Precision, fresh: Any
) -> tuple[str | None, list[bytes], list[bytes]]:
    """One float32 weight as ``(kind, new initializers, nodes that restore it under its name)``:
    int8 with per-channel scales (big matrices with a known output axis), else float16, else
    ``(None, [], [])`` to keep it as it is (values beyond float16's range)."""
    if precision == "int8" and values.size >= MIN_INT8_VALUES and axis is not None:
        quantized, scale = _quantize(values, axis)
        stored, restored, scale_name = (
            fresh(f"{name}.int8"),
            fresh(f"{name}.int8.float"),
            fresh(f"{name}.scale"),
        )
        initializers = [
            _bytes_field(GRAPH_INITIALIZER, _tensor(stored, quantized, INT8)),
            _bytes_field(GRAPH_INITIALIZER, _tensor(scale_name, scale, FLOAT)),
        ]
        nodes = [
            _node("Cast", [stored], restored, fresh(f"{name}.cast"), to_type=FLOAT),
            _node("Mul", [restored, scale_name], name, fresh(f"{name}.rescale")),
        ]
        return "int8", initializers, nodes
    if np.abs(values).max() <= np.finfo(np.float16).max:
        stored = fresh(f"{name}.fp16")
        initializer = _bytes_field(GRAPH_INITIALIZER, _tensor(stored, values.astype(np.float16), FLOAT16))
        return "fp16", [initializer], [_node("Cast", [stored], name, fresh(f"{name}.cast"), to_type=FLOAT)]
    return None, [], []


def _lean_model(model: bytes, precision: Precision) -> bytes:
    top = list(_fields(model))
    graphs = [field for field in top if field.number == MODEL_GRAPH and field.wire == LENGTH]
    if len(graphs) != 1:
        raise LeanModelError("not an ONNX model: no graph")
    graph = graphs[0].value
    uses, taken, graph_inputs = _uses(graph)

    def fresh(base: str) -> str:
        name, counter = base, 1
        while name in taken:
            name, counter = f"{base}.{counter}", counter + 1
        taken.add(name)
        return name

    nodes: list[bytes] = []
    graph_out: list[bytes] = []
    counts = {"int8": 0, "fp16": 0}
    for field in _fields(graph):
        if field.number != GRAPH_INITIALIZER or field.wire != LENGTH:
            graph_out.append(field.raw)
            continue
        tensor: dict[int, list[_Field]] = {}
        for item in _fields(field.value):
            tensor.setdefault(item.number, []).append(item)
        name = tensor[TENSOR_NAME][0].value.decode() if TENSOR_NAME in tensor else ""
        values = _float_values(tensor)
        # An initializer that is also a graph input is a default the caller may override: left alone.
        small = values is None or values.size < MIN_LEAN_VALUES
        if not name or name in graph_inputs or small or not np.isfinite(values).all():
            graph_out.append(field.raw)
            continue
        axis = _output_axis(uses.get(name, []), values.ndim)
        kind, initializers, restoring = _rewrite_weight(name, values, axis, precision, fresh)
        if kind is None:
            graph_out.append(field.raw)
            continue
        graph_out += initializers
        nodes += restoring
        counts[kind] += 1
    # The new nodes come first: they read only initializers, and ONNX wants nodes in dependency order.
    new_graph = b"".join(_bytes_field(GRAPH_NODE, node) for node in nodes) + b"".join(graph_out)
    note = (
        f"{precision}: {counts['int8']} weight tensors as int8 with per-channel scales, {counts['fp16']} as "
        f"float16, restored to float32 in the graph; made from a {len(model):,}-byte float32 model "
        f"by latentz.browser_models (version {CONVERTER_VERSION})"
    )
    metadata = _bytes_field(MODEL_METADATA, _bytes_field(1, METADATA_KEY) + _bytes_field(2, note))
    out = [(_bytes_field(MODEL_GRAPH, new_graph) if field is graphs[0] else field.raw) for field in top]
    return b"".join(out) + metadata


# -- how far a copy is from the original -----------------------------------------------------------
def _session(model: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _run(session: Any, array: np.ndarray) -> list[np.ndarray]:
    """The outputs for a batch, one sample at a time for a graph exported with a batch of 1 (the
    rate-distortion codec's)."""
    source = session.get_inputs()[0]
    if source.shape[0] != 1 or len(array) == 1:
        return session.run(None, {source.name: array})
    parts = [session.run(None, {source.name: sample[None]}) for sample in array]
    return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


def probe_latents(latent_shape: tuple[int, ...], count: int = 16, seed: int = 0) -> np.ndarray:
    """Latents drawn from the prior N(0, I): the inputs a copy is judged on (no data set needed)."""
    return np.random.default_rng(seed).standard_normal((count, *latent_shape)).astype(np.float32)


def output_error(
    decoder: bytes,
    latent_shape: tuple[int, ...],
    lean_decoder: bytes | None = None,
    lean_encoder: bytes | None = None,
    encoder: bytes | None = None,
) -> dict[str, float]:
    """The largest pixel difference, in grey levels of 255, that each copy makes on prior samples.

    ``decoder``: the copy's images against the original's. ``encoder``: the original decoder's
    images of the copy's posterior means against those of the original's, for images the original
    decoder made from prior samples (what an encoder copy changes is what the explorer then shows).
    """
    original = _session(decoder)
    latents = probe_latents(latent_shape)
    images = _run(original, latents)[0]
    errors: dict[str, float] = {}
    if lean_decoder is not None:
        errors["decoder"] = float(np.abs(_run(_session(lean_decoder), latents)[0] - images).max() * 255)
    if lean_encoder is not None:
        if encoder is None:
            raise ValueError("judging an encoder copy needs the original encoder")
        means = _run(_session(encoder), images)[0]
        lean_means = _run(_session(lean_encoder), images)[0]
        shown, lean_shown = _run(original, means)[0], _run(original, lean_means)[0]
        errors["encoder"] = float(np.abs(lean_shown - shown).max() * 255)
    return errors


def describe(model: bytes) -> str | None:
    """The note a copy carries about how it was made (None for an original)."""
    for field in _fields(model):
        if field.number == MODEL_METADATA and field.wire == LENGTH:
            entry = {item.number: item.value for item in _fields(field.value)}
            if entry.get(1) == METADATA_KEY.encode():
                return entry.get(2, b"").decode()
    return None
