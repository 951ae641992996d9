"""TF Serving's `PredictionService` and `ModelService` over the ServableManager.

Thin: protobuf in, the manager and `predict` do the work, ServingError → the gRPC status
TF Serving would send. TensorFlow runs in worker threads so the event loop keeps accepting
requests while a batch is computed. Classify, Regress and MultiInference stay UNIMPLEMENTED
(the generated base class answers them): medmesh only calls Predict.
"""

from __future__ import annotations

import asyncio

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

from svc_infer.model_server import config as server_config
from svc_infer.model_server.manager import ServableManager, ServingError, model_spec_of
from svc_infer.model_server.predict import model_metadata, run_predict, validate_metadata_request


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService: Predict and GetModelMetadata."""

    def __init__(self, manager: ServableManager) -> None:
        self._manager = manager

    async def Predict(  # noqa: N802 - the generated base class names the methods
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        """Run a signature of the requested servable."""
        try:
            servable = self._manager.resolve(model_spec_of(request))
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
