"""Reading a PredictRequest without copying its tensors.

A batch of eight 224x224x3 float32 images is 4.8 MB of `tensor_content`. Parsed the generic
way it is copied three times before TensorFlow sees it (the parser into its arena, the field
getter into a bytes object, `tf.make_ndarray` into an array): on two shared cores that was a
few percent of ResNet-50's own time per batch (bench/bench_models.py). TF Serving, in C++,
aliases the request buffer instead; so does this reader.

`decode_predict_request` walks the protobuf wire format of the received bytes: every field of
the request except the inputs' `tensor_content` is parsed by protobuf itself (small), and each
input's `tensor_content` is kept as a view into the received message. The result reads like
`PredictRequest.FromString`: `DecodedPredict.request` is that message without the inputs'
`tensor_content`, `DecodedPredict.contents` holds them by input alias. On anything it does
not understand it falls back to `FromString` entirely (same result, same errors).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import predict_pb2

_INPUTS = 2  # PredictRequest.inputs: map<string, TensorProto>
_MAP_KEY, _MAP_VALUE = 1, 2
_TENSOR_CONTENT = 4  # TensorProto.tensor_content
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


@dataclass
class DecodedPredict:
    """A PredictRequest whose inputs' `tensor_content` live apart, as views (no copy)."""

    request: predict_pb2.PredictRequest
    contents: dict[str, memoryview] = field(default_factory=dict)


class _Unsupported(Exception):
    """Something the walker does not read (groups, malformed bytes): parse generically."""


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _Unsupported


def _fields(data: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, value end) of each field."""
    pos = start
    while pos < end:
        begin = pos
        tag, pos = _varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _, after = _varint(data, pos, end)
        elif wire == _FIXED64:
            after = pos + 8
        elif wire == _FIXED32:
            after = pos + 4
        elif wire == _LENGTH:
            length, pos = _varint(data, pos, end)
            after = pos + length
        else:
            raise _Unsupported  # groups: not in these messages
        if number == 0 or after > end:
            raise _Unsupported
        yield number, wire, begin, pos, after
        pos = after


def _tensor(data: memoryview, start: int, end: int) -> tuple[bytes, memoryview | None]:
    """A TensorProto's fields other than tensor_content (as bytes), and tensor_content."""
    rest, content = bytearray(), None
    for number, wire, begin, value, after in _fields(data, start, end):
        if number == _TENSOR_CONTENT and wire == _LENGTH:
            content = data[value:after]  # the last one wins, as in protobuf
        else:
            rest += data[begin:after]
    return bytes(rest), content


def _walk(data: bytes) -> DecodedPredict:
    view = memoryview(data)
    rest = bytearray()
    inputs: list[tuple[str, bytes, memoryview | None]] = []
    for number, wire, begin, value, after in _fields(view, 0, len(view)):
        if number != _INPUTS or wire != _LENGTH:
            rest += view[begin:after]
            continue
        key, tensor, content, values = "", b"", None, 0
        for entry_number, entry_wire, _, start, end in _fields(view, value, after):
            if entry_number == _MAP_KEY and entry_wire == _LENGTH:
                key = str(view[start:end], "utf-8")
            elif entry_number == _MAP_VALUE and entry_wire == _LENGTH:
                tensor, content = _tensor(view, start, end)
                values += 1
            else:
                raise _Unsupported
        if values > 1:
            raise _Unsupported  # protobuf would merge the two tensors
        inputs.append((key, tensor, content))
    decoded = DecodedPredict(predict_pb2.PredictRequest.FromString(bytes(rest)))
    for key, tensor, content in inputs:  # a repeated key: the last entry wins, as in protobuf
        decoded.request.inputs[key].CopyFrom(tensor_pb2.TensorProto.FromString(tensor))
        if content is None:
            decoded.contents.pop(key, None)
        else:
            decoded.contents[key] = content
    return decoded


def decode_predict_request(data: bytes) -> DecodedPredict:
    """The request in `data` (see the module docstring); `FromString` for anything unusual."""
    try:
        return _walk(data)
    except (_Unsupported, UnicodeDecodeError, ValueError, DecodeError):
        return DecodedPredict(predict_pb2.PredictRequest.FromString(data))
