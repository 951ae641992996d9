"""The model server answers like TF Serving: Predict, GetModelMetadata and GetModelStatus for
known and unknown models and versions, with TF Serving's status codes and messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from svc_infer.model_server.client import open_channel

OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
NUM_LABELS = 15


@pytest.fixture
async def channel(model_server_address: str) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the session's model server."""
    async with open_channel(model_server_address) as channel:
        yield channel


def spec(name: str | None, version: int | None = None, label: str | None = None, sig: str = ""):
    """A ModelSpec dict for the request constructors (None name: no model_spec at all)."""
    if name is None:
        return None
    value: dict[str, Any] = {"name": name, "signature_name": sig}
    if version is not None:
        value["version"] = {"value": version}
    if label is not None:
        value["version_label"] = label
    return value


def image(batch: int = 1, dtype: Any = np.float32, size: int = 224) -> tf.Tensor:
    """A deterministic image batch as a TensorProto."""
    rng = np.random.default_rng(7)
    return tf.make_tensor_proto(rng.uniform(-100, 100, (batch, size, size, 3)).astype(dtype))


async def call(coroutine: Any) -> tuple[grpc.StatusCode, str, Any]:
    """(code, details, response) of an RPC, errors included."""
    try:
        return OK, "", await coroutine
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", None


PREDICT_TABLE = [
    # (case, model spec, inputs, output filter, code, details or the version served)
    ("latest version", spec("resnet50"), {"image": image()}, [], OK, 2),
    ("specific version", spec("resnet50", 1), {"image": image()}, [], OK, 1),
    ("batch of 8", spec("resnet50", 2), {"image": image(8)}, [], OK, 2),
    (
        "unknown version",
        spec("resnet50", 7),
        {"image": image()},
        [],
        NOT_FOUND,
        "Servable not found for request: Specific(resnet50, 7)",
    ),
    (
        "unknown model",
        spec("nope"),
        {"image": image()},
        [],
        NOT_FOUND,
        "Servable not found for request: Latest(nope)",
    ),
    (
        "unknown model and version",
        spec("nope", 1),
        {},
        [],
        NOT_FOUND,
        "Servable not found for request: Specific(nope, 1)",
    ),
    ("no model spec", spec(None), {}, [], INVALID, "Missing ModelSpec"),
    ("empty model name", spec(""), {}, [], INVALID, "ModelSpec has no name specified."),
    (
        "unknown version label",
        spec("resnet50", label="canary"),
        {},
        [],
        INVALID,
        "Unrecognized servable version label: canary",
    ),
    (
        "unknown signature",
        spec("resnet50", sig="classify"),
        {"image": image()},
        [],
        PRECONDITION,
        'Serving signature key "classify" not found.',
    ),
    (
        "missing input",
        spec("resnet50"),
        {},
        [],
        INVALID,
        "input size does not match signature: 0!=1 len({}) != len({image}). "
        "Sent extra: {}. Missing but required: {image}.",
    ),
    (
        "misnamed input",
        spec("resnet50"),
        {"pixels": image()},
        [],
        INVALID,
        "input size does not match signature: 1!=1 len({pixels}) != len({image}). "
        "Sent extra: {pixels}. Missing but required: {image}.",
    ),
    (
        "wrong dtype",
        spec("resnet50"),
        {"image": image(dtype=np.int32)},
        [],
        INVALID,
        "Expects arg[0] to be float but int32 is provided",
    ),
    (
        "wrong shape",
        spec("resnet50"),
        {"image": image(size=100)},
        [],
        INVALID,
        "input image has shape [1,100,100,3] but the signature expects [?,224,224,3]",
    ),
    (
        "unknown output",
        spec("resnet50"),
        {"image": image()},
        ["logits"],
        INVALID,
        "output tensor alias not found in signature: logits "
        "Outputs expected to be in the set {probabilities}.",
    ),
    (
        "duplicate output",
        spec("resnet50"),
        {"image": image()},
        ["probabilities", "probabilities"],
        INVALID,
        "duplicate output tensor alias: probabilities",
    ),
]


@pytest.mark.parametrize(
    ("model_spec", "inputs", "output_filter", "code", "expected"),
    [row[1:] for row in PREDICT_TABLE],
    ids=[row[0] for row in PREDICT_TABLE],
)
async def test_predict_answers_like_tf_serving(
    channel: grpc.aio.Channel,
    model_spec: dict[str, Any] | None,
    inputs: dict[str, Any],
    output_filter: list[str],
    code: grpc.StatusCode,
    expected: str | int,
) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest(
        model_spec=model_spec, inputs=inputs, output_filter=output_filter
    )
    actual_code, details, response = await call(stub.Predict(request))
    assert (actual_code, details if code != OK else "") == (code, "" if code == OK else expected)
    if code == OK:
        assert response.model_spec.name == "resnet50"
        assert response.model_spec.version.value == expected
        assert response.model_spec.signature_name == "serving_default"
        probabilities = tf.make_ndarray(response.outputs["probabilities"])
        batch = tf.make_ndarray(request.inputs["image"]).shape[0]
        assert probabilities.shape == (batch, NUM_LABELS)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)


async def test_predict_runs_the_selected_version_and_matches_the_saved_model_in_process(
    channel: grpc.aio.Channel, model_base_dir
) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    inputs = {"image": image(2)}
    served = {}
    for version in (1, 2):
        response = await stub.Predict(
            predict_pb2.PredictRequest(model_spec=spec("resnet50", version), inputs=inputs)
        )
        served[version] = tf.make_ndarray(response.outputs["probabilities"])
    bare = tf.saved_model.load(str(model_base_dir / "resnet50" / "1"))
    expected = bare.signatures["serving_default"](image=tf.make_ndarray(inputs["image"]))
    np.testing.assert_allclose(served[1], expected["probabilities"].numpy(), rtol=1e-5, atol=1e-7)
    # Different seeds: two genuinely different arms.
    assert not np.allclose(served[1], served[2])


METADATA_TABLE = [
    ("known model", spec("minilm"), ["signature_def"], OK, ""),
    ("known version", spec("resnet50", 1), ["signature_def"], OK, ""),
    ("no model spec", spec(None), ["signature_def"], INVALID, "Missing ModelSpec"),
    (
        "no field",
        spec("resnet50"),
        [],
        INVALID,
        "GetModelMetadataRequest must specify at least one metadata_field",
    ),
    (
        "unsupported field",
        spec("resnet50"),
        ["labels"],
        INVALID,
        "Metadata field labels is not supported",
    ),
    (
        "unknown version",
        spec("resnet50", 9),
        ["signature_def"],
        NOT_FOUND,
        "Servable not found for request: Specific(resnet50, 9)",
    ),
    (
        "unknown model",
        spec("bert"),
        ["signature_def"],
        NOT_FOUND,
        "Servable not found for request: Latest(bert)",
    ),
]


@pytest.mark.parametrize(
    ("model_spec", "fields", "code", "details"),
    [row[1:] for row in METADATA_TABLE],
    ids=[row[0] for row in METADATA_TABLE],
)
async def test_get_model_metadata_answers_like_tf_serving(
    channel: grpc.aio.Channel,
    model_spec: dict[str, Any] | None,
    fields: list[str],
    code: grpc.StatusCode,
    details: str,
) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_spec, metadata_field=fields
    )
    actual_code, actual_details, response = await call(stub.GetModelMetadata(request))
    assert (actual_code, actual_details) == (code, details)
    if code == OK:
        assert response.model_spec.name == model_spec["name"]
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        assert response.metadata["signature_def"].Unpack(signature_map)
        assert {"serving_default", "metadata"} <= set(signature_map.signature_def)
        serving = signature_map.signature_def["serving_default"]
        assert serving.method_name == "tensorflow/serving/predict"


async def test_metadata_describes_the_signature_tensors(channel: grpc.aio.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    shapes = {}
    for model in ("resnet50", "minilm"):
        response = await stub.GetModelMetadata(
            get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=spec(model), metadata_field=["signature_def"]
            )
        )
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        serving = signature_map.signature_def["serving_default"]
        for kind, tensors in (("in", serving.inputs), ("out", serving.outputs)):
            for alias, info in tensors.items():
                dims = [d.size for d in info.tensor_shape.dim]
                shapes[(model, kind, alias)] = (tf.dtypes.as_dtype(info.dtype).name, dims)
    assert shapes == {
        ("resnet50", "in", "image"): ("float32", [-1, 224, 224, 3]),
        ("resnet50", "out", "probabilities"): ("float32", [-1, NUM_LABELS]),
        ("minilm", "in", "input_ids"): ("int32", [-1, -1]),
        ("minilm", "in", "attention_mask"): ("int32", [-1, -1]),
        ("minilm", "out", "embedding"): ("float32", [-1, 384]),
    }


STATUS_TABLE = [
    ("all versions, newest first", spec("resnet50"), OK, "", [2, 1]),
    ("one version", spec("resnet50", 1), OK, "", [1]),
    ("other model", spec("minilm"), OK, "", [1]),
    ("no model spec", spec(None), INVALID, "Missing ModelSpec", []),
    (
        "unknown version",
        spec("resnet50", 7),
        NOT_FOUND,
        "Could not find version 7 of model resnet50",
        [],
    ),
    ("unknown model", spec("nope"), NOT_FOUND, "Could not find any versions of model nope", []),
    (
        "unknown label",
        spec("resnet50", label="stable"),
        INVALID,
        "Unrecognized servable version label: stable",
        [],
    ),
]


@pytest.mark.parametrize(
    ("model_spec", "code", "details", "versions"),
    [row[1:] for row in STATUS_TABLE],
    ids=[row[0] for row in STATUS_TABLE],
)
async def test_get_model_status_answers_like_tf_serving(
    channel: grpc.aio.Channel,
    model_spec: dict[str, Any] | None,
    code: grpc.StatusCode,
    details: str,
    versions: list[int],
) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_spec)
    actual_code, actual_details, response = await call(stub.GetModelStatus(request))
    assert (actual_code, actual_details) == (code, details)
    if code == OK:
        assert [
            (s.version, s.state, s.status.error_code) for s in response.model_version_status
        ] == [(v, AVAILABLE, 0) for v in versions]


async def test_reflection_lists_the_tf_serving_services_for_grpcurl(
    channel: grpc.aio.Channel,
) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(requests()):
        names = {s.name for s in response.list_services_response.service}
        assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"} <= names


async def test_standard_health_check_reports_serving_for_container_probes(
    channel: grpc.aio.Channel,
) -> None:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
