"""The model server's Predict decoder (svc_infer/model_server/wire.py) reads what protobuf
reads: for every request in the table, the decoded message plus the tensors kept apart equals
`PredictRequest.FromString`, and bytes protobuf refuses are refused the same way."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from svc_infer.model_server.wire import decode_predict_request
from svc_infer.tfserving import ModelRef, encode_predict_request, to_tensor_proto


def _request(**inputs: tensor_pb2.TensorProto) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec=ModelRef("resnet50", 3).spec())
    for alias, tensor in inputs.items():
        request.inputs[alias].CopyFrom(tensor)
    return request


def _strings() -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2)]
        ),
        string_val=[b"a", b"bc"],
    )


def _floats_in_val_field() -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)]
        ),
        float_val=[1.0, 2.0, 3.5],
    )


IMAGES = np.random.default_rng(1).random((2, 4, 4, 3), dtype=np.float32)
TOKENS = np.arange(12, dtype=np.int64).reshape(2, 6)


def _serialized(request: predict_pb2.PredictRequest) -> bytes:
    return request.SerializeToString()


REQUESTS: dict[str, bytes] = {
    "one float batch": _serialized(_request(input_1=to_tensor_proto(IMAGES))),
    "two int inputs and an output filter": _serialized(
        predict_pb2.PredictRequest(
            model_spec=ModelRef("minilm").spec(),
            inputs={
                "input_ids": to_tensor_proto(TOKENS),
                "attention_mask": to_tensor_proto(np.ones_like(TOKENS)),
            },
            output_filter=["embedding"],
        )
    ),
    "values in the typed field": _serialized(_request(x=_floats_in_val_field())),
    "string tensor": _serialized(_request(text=_strings())),
    "empty tensor_content": _serialized(
        _request(x=tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b""))
    ),
    "a key sent twice (the last wins)": _serialized(_request(x=to_tensor_proto(IMAGES)))
    + _serialized(_request(x=to_tensor_proto(IMAGES[:1]))),
    "unknown field in the request": _serialized(_request(x=to_tensor_proto(TOKENS)))
    + b"\xf8\x07\x01",
    "the client's own framing": b"".join(
        encode_predict_request(
            ModelRef("resnet50", 2), {"input_1": IMAGES}, output_filter=["probabilities"]
        )
    ),
    "no inputs": _serialized(predict_pb2.PredictRequest(model_spec=ModelRef("m").spec())),
    "nothing": b"",
}


@pytest.mark.parametrize("case", list(REQUESTS))
def test_the_decoded_request_is_what_protobuf_parses(case: str) -> None:
    data = REQUESTS[case]
    decoded = decode_predict_request(data)
    rebuilt = predict_pb2.PredictRequest()
    rebuilt.CopyFrom(decoded.request)
    for alias, content in decoded.contents.items():
        rebuilt.inputs[alias].tensor_content = bytes(content)
    assert rebuilt == predict_pb2.PredictRequest.FromString(data)


def test_a_batch_is_not_copied_out_of_the_received_bytes() -> None:
    data = REQUESTS["one float batch"]
    content = decode_predict_request(data).contents["input_1"]
    assert content.obj is data  # a view of the message gRPC handed over
    assert np.array_equal(np.frombuffer(content, np.float32).reshape(IMAGES.shape), IMAGES)


@pytest.mark.parametrize(
    "data",
    [b"\x12\xff\xff\xff\x0f", b"\x12\x05\x0a\x01", b"\x0b"],
    ids=["length past the end", "truncated map entry", "group tag"],
)
def test_bytes_protobuf_refuses_are_refused_alike(data: bytes) -> None:
    with pytest.raises(DecodeError):
        predict_pb2.PredictRequest.FromString(data)
    with pytest.raises(DecodeError):
        decode_predict_request(data)
