"""TF Serving's `PredictionService` and `ModelService` over the ServableManager.

Thin: protobuf in, the manager and `predict` do the work, ServingError → the gRPC status
TF Serving would send. TensorFlow runs in worker threads so the event loop keeps accepting
requests while a batch is computed. Classify, Regress and MultiInference stay UNIMPLEMENTED
(the generated base class answers them): medmesh only calls Predict.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
    status_pb2,
)

from svc_infer.model_server import config as server_config
from svc_infer.model_server.manager import ServableManager, ServingError, model_spec_of
from svc_infer.model_server.predict import model_metadata, run_predict, validate_metadata_request
from svc_infer.model_server.wire import DecodedPredict, decode_predict_request

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService: Predict and GetModelMetadata."""

    def __init__(self, manager: ServableManager) -> None:
        self._manager = manager

    async def Predict(  # noqa: N802 - the generated base class names the methods
        self, request: DecodedPredict, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        """Run a signature of the requested servable (the request as `PREDICTION_HANDLERS`
        decodes it: its tensors are views of the received bytes)."""
        try:
            servable = self._manager.resolve(model_spec_of(request.request))
            return await asyncio.to_thread(run_predict, servable, request)
        except ServingError as exc:
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises

    async def GetModelMetadata(  # noqa: N802
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.aio.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """The signature definitions of the requested servable."""
        try:
            validate_metadata_request(request)
            return model_metadata(self._manager.resolve(request.model_spec))
        except ServingError as exc:
            await context.abort(exc.code, exc.message)
            raise


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: GetModelStatus and HandleReloadConfigRequest."""

    def __init__(self, manager: ServableManager) -> None:
        self._manager = manager

    async def GetModelStatus(  # noqa: N802
        self,
        request: get_model_status_pb2.GetModelStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """The state of one version, or of every version the server knows, newest first."""
        try:
            states = self._manager.status(model_spec_of(request))
        except ServingError as exc:
            await context.abort(exc.code, exc.message)
            raise
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state in states:
            response.model_version_status.add(
                version=version,
                state=state.state,
                status=status_pb2.StatusProto(
                    error_code=state.error_code, error_message=state.error_message
                ),
            )
        return response

    async def HandleReloadConfigRequest(  # noqa: N802
        self,
        request: model_management_pb2.ReloadConfigRequest,
        context: grpc.aio.ServicerContext,
    ) -> model_management_pb2.ReloadConfigResponse:
        """Replace the model configuration (models, version policies, labels) at run time."""
        try:
            await self._manager.reload(request.config)
        except server_config.ConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ServingError as exc:
            await context.abort(exc.code, exc.message)
        return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto())


def add_prediction_service(servicer: PredictionServicer, server: grpc.aio.Server) -> None:
    """`add_PredictionServiceServicer_to_server` with one difference: Predict's requests are
    decoded by `wire.decode_predict_request` (tensors as views of the received bytes)."""

    def handler(method: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=request, response_serializer=response.SerializeToString
        )

    handlers = {
        "Classify": handler(
            servicer.Classify,
            classification_pb2.ClassificationRequest.FromString,
            classification_pb2.ClassificationResponse,
        ),
        "Regress": handler(
            servicer.Regress,
            regression_pb2.RegressionRequest.FromString,
            regression_pb2.RegressionResponse,
        ),
        "Predict": handler(servicer.Predict, decode_predict_request, predict_pb2.PredictResponse),
        "MultiInference": handler(
            servicer.MultiInference,
            inference_pb2.MultiInferenceRequest.FromString,
            inference_pb2.MultiInferenceResponse,
        ),
        "GetModelMetadata": handler(
            servicer.GetModelMetadata,
            get_model_metadata_pb2.GetModelMetadataRequest.FromString,
            get_model_metadata_pb2.GetModelMetadataResponse,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(PREDICTION_SERVICE, handlers),)
    )
