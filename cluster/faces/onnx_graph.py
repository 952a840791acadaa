"""Read an ONNX model without the `onnx` package.

An ONNX file is a protobuf `ModelProto`; only what is needed to rebuild a network
in PyTorch is decoded here — the nodes (op type, inputs, outputs, attributes), the
initializers (weight tensors) and the graph's input and output names — straight from
the wire format with the reader `tf_graph.py` uses. Field numbers are those of
onnx/onnx.proto (IR version 3 and later).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .tf_graph import _fields, _signed

logger = logging.getLogger(__name__)

# TensorProto.DataType values for the dtypes a model's weights use.
_DTYPES = {1: np.float32, 6: np.int32, 7: np.int64, 11: np.float64}


@dataclass
class OnnxNode:
    """One NodeProto: op type, input and output value names, decoded attributes."""

    op: str
    name: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    attrs: dict[str, object] = field(default_factory=dict)


@dataclass
class OnnxGraph:
    """A graph's nodes in topological order, its weights by name, and its input and output names."""

    nodes: list[OnnxNode]
    initializers: dict[str, np.ndarray]
    inputs: list[str]
    outputs: list[str]


def _packed_ints(val) -> list[int]:
    """Repeated int64 field, packed (bytes) or not (one int per occurrence)."""
    if isinstance(val, int):
        return [_signed(val)]
    out, buf, pos = [], val, 0
    from .tf_graph import _varint

    while pos < len(buf):
        v, pos = _varint(buf, pos)
        out.append(_signed(v))
    return out


def _tensor(buf: memoryview) -> tuple[str, np.ndarray]:
    """Decode a TensorProto into (name, array)."""
    dims: list[int] = []
    dtype, name, raw, floats, ints = 1, "", None, [], []
    for num, wire, val in _fields(buf):
        if num == 1:
            dims += _packed_ints(val)
        elif num == 2:
            dtype = val
        elif num == 4:  # float_data, packed
            floats.append(np.frombuffer(val, "<f4") if wire == 2 else np.frombuffer(val, "<f4"))
        elif num == 7:  # int64_data
            ints += _packed_ints(val)
        elif num == 8:
            name = bytes(val).decode()
        elif num == 9:
            raw = bytes(val)
    if dtype not in _DTYPES:
        raise ValueError(f"tensor {name!r}: unsupported ONNX data type {dtype}")
    np_dtype = np.dtype(_DTYPES[dtype]).newbyteorder("<")
    if raw is not None:
        array = np.frombuffer(raw, np_dtype)
    elif floats:
        array = np.concatenate(floats)
    else:
        array = np.asarray(ints, np_dtype)
    return name, array.astype(_DTYPES[dtype]).reshape(dims)


def _attribute(buf: memoryview) -> tuple[str, object]:
    """Decode an AttributeProto into (name, value): a float, int, string, tensor or list of ints/floats."""
    name, value, ints, floats = "", None, [], []
    for num, wire, val in _fields(buf):
        if num == 1:
            name = bytes(val).decode()
        elif num == 2:
            value = float(np.frombuffer(val, "<f4")[0])
        elif num == 3:
            value = _signed(val)
        elif num == 4:
            value = bytes(val).decode(errors="replace")
        elif num == 5:
            value = _tensor(val)[1]
        elif num == 7:
            floats += list(np.frombuffer(val, "<f4")) if wire in (2, 5) else []
        elif num == 8:
            ints += _packed_ints(val)
    if value is None:
        value = ints if ints else [float(f) for f in floats]
    return name, value


def _node(buf: memoryview) -> OnnxNode:
    node = OnnxNode(op="")
    for num, _, val in _fields(buf):
        if num == 1:
            node.inputs.append(bytes(val).decode())
        elif num == 2:
            node.outputs.append(bytes(val).decode())
        elif num == 3:
            node.name = bytes(val).decode()
        elif num == 4:
            node.op = bytes(val).decode()
        elif num == 5:
            key, value = _attribute(val)
            node.attrs[key] = value
    return node


def _value_name(buf: memoryview) -> str:
    """The name of a ValueInfoProto."""
    for num, _, val in _fields(buf):
        if num == 1:
            return bytes(val).decode()
    return ""


def read_onnx(data: bytes) -> OnnxGraph:
    """Decode an ONNX model's graph.

    Args:
        data: the bytes of a `.onnx` file.

    Returns:
        The graph; inputs exclude initializers (older exporters list weights as inputs too).

    Raises:
        ValueError: not an ONNX model, or a tensor type this reader does not know.
    """
    graph = None
    for num, wire, val in _fields(memoryview(data)):
        if num == 7 and wire == 2:
            graph = val
    if graph is None:
        raise ValueError("not an ONNX model: no graph (ModelProto field 7)")
    nodes, inits, inputs, outputs = [], {}, [], []
    for num, _, val in _fields(graph):
        if num == 1:
            nodes.append(_node(val))
        elif num == 5:
            key, array = _tensor(val)
            inits[key] = array
        elif num == 11:
            inputs.append(_value_name(val))
        elif num == 12:
            outputs.append(_value_name(val))
    inputs = [i for i in inputs if i not in inits]
    return OnnxGraph(nodes, inits, inputs, outputs)
