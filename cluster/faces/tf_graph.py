"""Read a TensorFlow frozen GraphDef (.pb) without TensorFlow.

A frozen graph is a protobuf `GraphDef` message; only the few fields needed to
recover the graph's structure and its constant tensors are decoded here, straight
from the protobuf wire format (field numbers from tensorflow/core/framework/
graph.proto, node_def.proto, attr_value.proto, tensor.proto, tensor_shape.proto).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

# TensorFlow DataType enum values (types.proto) for the dtypes a model holds.
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 10: np.bool_}
_VAL_FIELDS = {5: "<f4", 6: "<f8", 7: "<i4", 10: "<i8"}  # float_val, double_val, int_val, int64_val


@dataclass
class TfNode:
    """One NodeDef: name, op, inputs and decoded attributes."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, object] = field(default_factory=dict)


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at `pos`; return (value, new position)."""
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview):
    """Yield (field number, wire type, value) for each field of one message."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire in (1, 2, 5):
            if wire == 2:
                n, pos = _varint(buf, pos)
            else:
                n = 8 if wire == 1 else 4
            if pos + n > end:
                raise ValueError(f"field {num} runs past the end of its message")
            val, pos = buf[pos:pos + n], pos + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} for field {num}")
        yield num, wire, val


def _signed(v: int) -> int:
    """Reinterpret a 64-bit varint as a two's-complement int64."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _shape(buf: memoryview) -> list[int]:
    """Decode a TensorShapeProto into a list of dimension sizes."""
    dims = []
    for num, _, val in _fields(buf):
        if num == 2:
            size = 0
            for n2, _, v2 in _fields(val):
                if n2 == 1:
                    size = _signed(v2)
            dims.append(size)
    return dims


def _tensor(buf: memoryview) -> np.ndarray:
    """Decode a TensorProto into a numpy array."""
    dtype, shape, content, vals = None, [], None, []
    for num, wire, val in _fields(buf):
        if num == 1:
            dtype = _DTYPES.get(val)
            if dtype is None:
                raise ValueError(f"unsupported TensorProto dtype enum {val}")
        elif num == 2:
            shape = _shape(val)
        elif num == 4:
            content = bytes(val)
        elif num in _VAL_FIELDS:
            fmt = _VAL_FIELDS[num]
            if wire == 2 and num in (5, 6):  # packed floats/doubles
                vals.extend(np.frombuffer(val, fmt).tolist())
            elif wire == 2:  # packed varints
                p, m = 0, len(val)
                while p < m:
                    v, p = _varint(val, p)
                    vals.append(_signed(v))
            elif wire == 0:
                vals.append(_signed(val))
            else:
                vals.append(np.frombuffer(val, fmt)[0])
    if dtype is None:
        raise ValueError("TensorProto has no dtype")
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        arr = np.frombuffer(content, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    elif len(vals) == count or not vals:
        arr = np.asarray(vals if vals else [0] * count, dtype=dtype)
    else:  # proto stores a splat: the last value repeats to fill the shape
        arr = np.asarray(vals + [vals[-1]] * (count - len(vals)), dtype=dtype)
    return arr.reshape(shape)


def _attr(buf: memoryview) -> object:
    """Decode an AttrValue: tensor, shape, list of ints, or a scalar."""
    for num, wire, val in _fields(buf):
        if num == 1:  # ListValue: keep its ints and strings, enough for strides/ksize
            ints, strs = [], []
            for n2, w2, v2 in _fields(val):
                if n2 == 3 and w2 == 2:
                    p = 0
                    while p < len(v2):
                        x, p = _varint(v2, p)
                        ints.append(_signed(x))
                elif n2 == 3:
                    ints.append(_signed(v2))
                elif n2 == 2:
                    strs.append(bytes(v2).decode())
            return ints or strs
        if num == 2:
            return bytes(val).decode(errors="replace")
        if num == 3:
            return _signed(val)
        if num == 4:
            return float(np.frombuffer(val, "<f4")[0])
        if num in (5, 6):
            return val
        if num == 7:
            return _shape(val)
        if num == 8:
            return _tensor(val)
    return None


def _node(buf: memoryview) -> TfNode:
    """Decode one NodeDef."""
    node = TfNode(name="", op="")
    for num, _, val in _fields(buf):
        if num == 1:
            node.name = bytes(val).decode()
        elif num == 2:
            node.op = bytes(val).decode()
        elif num == 3:
            node.inputs.append(bytes(val).decode())
        elif num == 5:
            key, value = "", None
            for n2, _, v2 in _fields(val):
                if n2 == 1:
                    key = bytes(v2).decode()
                elif n2 == 2:
                    value = _attr(v2)
            node.attrs[key] = value
    return node


def read_graph_def(data: bytes) -> dict[str, TfNode]:
    """Parse a serialized GraphDef into its nodes, by name, in graph order.

    Args:
        data: the bytes of a frozen `.pb` file.

    Returns:
        A dict from node name to `TfNode`; constants carry their value in
        `attrs["value"]` as a numpy array.

    Raises:
        ValueError: when the bytes are not a GraphDef this reader understands.
    """
    nodes: dict[str, TfNode] = {}
    try:
        for num, _, val in _fields(memoryview(data)):
            if num == 1:
                node = _node(val)
                nodes[node.name] = node
    except (IndexError, ValueError) as exc:  # IndexError: a varint ran past the end
        raise ValueError(f"truncated or corrupt GraphDef: {exc}") from exc
    logger.debug("read GraphDef: %d nodes", len(nodes))
    return nodes
