"""Predict and GetModelMetadata on a loaded servable, with TF Serving's checks and messages.

The order of checks is TF Serving's (predict_util.cc): the signature key, then the set of
input aliases, then each input tensor (parse, dtype, shape), then the output filter; only
then does the graph run. Outputs are returned in the `*_val` fields (TF Serving's
`kAsProtoField`), which `tf.make_ndarray` reads like `tensor_content`.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import any_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from svc_infer.model_server.manager import Servable, ServingError, model_spec_of
from svc_infer.model_server.wire import DecodedPredict

DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_DEF_FIELD = "signature_def"

# TensorFlow dtype → the TensorProto repeated field TF Serving fills for it.
_VALUE_FIELDS: dict[int, str] = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def _set_text(values: Mapping[str, object] | set[str]) -> str:
    return ",".join(sorted(values))


def _dtype_name(dtype: int) -> str:
    """TensorFlow's C++ DataTypeString: DT_FLOAT → `float`, DT_INT32 → `int32`."""
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def tensor_proto(value: np.ndarray | bytes) -> tensor_pb2.TensorProto:
    """A numpy array (or the bytes of a scalar string tensor) as a TensorProto with the
    values in the typed repeated field."""
    array = np.asarray(value)
    if array.dtype.kind in "SO":
        dtype = types_pb2.DT_STRING
    else:
        dtype = tf.dtypes.as_dtype(array.dtype).as_datatype_enum
    field = _VALUE_FIELDS.get(dtype)
    if field is None:
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(
        dtype=dtype,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]
        ),
    )
    getattr(proto, field).extend(array.ravel().tolist())
    return proto


def _check_shape(alias: str, array: np.ndarray, info: meta_graph_pb2.TensorInfo) -> None:
    if info.tensor_shape.unknown_rank:
        return
    expected = [d.size for d in info.tensor_shape.dim]
    compatible = len(expected) == array.ndim and all(
        e < 0 or e == actual for e, actual in zip(expected, array.shape, strict=True)
    )
    if not compatible:
        shown = ",".join("?" if e < 0 else str(e) for e in expected)
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {alias} has shape [{','.join(map(str, array.shape))}] "
            f"but the signature expects [{shown}]",
        )


def _tensor_array(proto: tensor_pb2.TensorProto, content: memoryview | None) -> np.ndarray:
    """`tf.make_ndarray(proto)`; with `content` (the tensor_content kept apart by
    wire.decode_predict_request) a read-only view of those bytes, not a copy."""
    if not content or proto.dtype in (types_pb2.DT_STRING, types_pb2.DT_INVALID):
        return tf.make_ndarray(proto)
    shape = [d.size for d in proto.tensor_shape.dim]
    dtype = tf.dtypes.as_dtype(proto.dtype).as_numpy_dtype
    return np.frombuffer(content, dtype=dtype).reshape(shape)


def _input_arrays(
    signature: meta_graph_pb2.SignatureDef, decoded: DecodedPredict
) -> dict[str, np.ndarray]:
    request = decoded.request
    requested, expected = set(request.inputs), set(signature.inputs)
    if requested != expected:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(requested)}!={len(expected)} "
            f"len({{{_set_text(requested)}}}) != len({{{_set_text(expected)}}}). "
            f"Sent extra: {{{_set_text(requested - expected)}}}. "
            f"Missing but required: {{{_set_text(expected - requested)}}}.",
        )
    arrays: dict[str, np.ndarray] = {}
    for index, alias in enumerate(sorted(signature.inputs)):
        info, proto = signature.inputs[alias], request.inputs[alias]
        if proto.dtype != info.dtype:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects arg[{index}] to be {_dtype_name(info.dtype)} but "
                f"{_dtype_name(proto.dtype)} is provided",
            )
        try:
            array = _tensor_array(proto, decoded.contents.get(alias))
        except (ValueError, TypeError) as exc:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}"
            ) from exc
        _check_shape(alias, array, info)
        arrays[alias] = array
    return arrays


def _output_aliases(
    signature: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest
) -> list[str]:
    aliases: list[str] = []
    for alias in request.output_filter:
        if alias not in signature.outputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{_set_text(signature.outputs)}}}.",
            )
        if alias in aliases:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}"
            )
        aliases.append(alias)
    return aliases or sorted(signature.outputs)


def run_predict(servable: Servable, decoded: DecodedPredict) -> predict_pb2.PredictResponse:
    """Run the requested signature of `servable` (blocking: call it in a worker thread)."""
    request = decoded.request
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = servable.signature_defs.get(signature_name)
    function = servable.signatures.get(signature_name)
    if signature is None or function is None:
        raise ServingError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f'Serving signature key "{signature_name}" not found.',
        )
    arrays = _input_arrays(signature, decoded)
    aliases = _output_aliases(signature, request)
    try:
        outputs = function(**{alias: tf.constant(array) for alias, array in arrays.items()})
    except tf.errors.OpError as exc:
        raise ServingError(_grpc_code(exc.error_code), exc.message) from exc
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = signature_name
    for alias in aliases:
        response.outputs[alias].CopyFrom(tensor_proto(outputs[alias].numpy()))
    return response


def _grpc_code(tf_code: int) -> grpc.StatusCode:
    """TensorFlow's error codes are the canonical gRPC codes."""
    for code in grpc.StatusCode:
        if code.value[0] == tf_code:
            return code
    return grpc.StatusCode.UNKNOWN


def validate_metadata_request(request: get_model_metadata_pb2.GetModelMetadataRequest) -> None:
    """GetModelMetadataImpl's request checks."""
    model_spec_of(request)
    if not request.metadata_field:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "GetModelMetadataRequest must specify at least one metadata_field",
        )
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported"
            )


def model_metadata(servable: Servable) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The servable's signature definitions, packed as TF Serving packs them."""
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    packed = any_pb2.Any()
    packed.Pack(signature_map)
    response.metadata[SIGNATURE_DEF_FIELD].CopyFrom(packed)
    return response
