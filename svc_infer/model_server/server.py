"""The model server's lifecycle: load the configured models, serve gRPC, poll, stop.

Like TF Serving, it answers only once every configured model has loaded its aspired
versions (so a ready server never says NOT_FOUND for a model that is still loading), then
polls the base paths every `poll_seconds` for new or removed versions
(`--file_system_poll_wait_seconds`). Messages have no size limit, as in TF Serving: a batch
of eight 224x224x3 float32 images is 4.8 MB, over gRPC's 4 MB default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from tensorflow_serving.apis import (
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
)

from svc_infer.model_server.config import ModelServerConfig
from svc_infer.model_server.manager import ServableManager
from svc_infer.model_server.servicer import (
    ModelServicer,
    PredictionServicer,
    add_prediction_service,
)

_log = structlog.get_logger("svc_infer.model_server")

UNLIMITED_MESSAGES = (
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
)
DEFAULT_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class RunningModelServer:
    """A started server: where it listens, and its manager (for reloads in tests)."""

    address: str
    manager: ServableManager


async def _poll(manager: ServableManager, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await manager.reconcile()
        except Exception as exc:  # noqa: BLE001 - a bad poll must not stop serving
            _log.warning("model poll failed", error=str(exc))


@contextlib.asynccontextmanager
async def running_model_server(
    config: ModelServerConfig,
    *,
    address: str = "127.0.0.1:0",
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    grace_s: float = 5.0,
) -> AsyncIterator[RunningModelServer]:
    """Serve `config` in this process until the block exits (port 0 picks a free port)."""
    manager = ServableManager(config)
    await manager.reconcile()
    server = grpc.aio.server(options=list(UNLIMITED_MESSAGES))
    add_prediction_service(PredictionServicer(manager), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager), server)
    # Additions to TF Serving, which has neither: the standard health service (container
    # probes: `python -m medmesh.healthcheck HOST:PORT`) and reflection (grpcurl, no protos).
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
            model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    host = address.rsplit(":", 1)[0]
    port = server.add_insecure_port(address)
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    poller = asyncio.create_task(_poll(manager, poll_seconds)) if poll_seconds > 0 else None
    bound = f"{host}:{port}"
    _log.info("model server serving", address=bound, models=manager.available())
    try:
        yield RunningModelServer(bound, manager)
    finally:
        await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        await server.stop(grace_s)


def write_ready_file(path: Path, address: str, manager: ServableManager) -> None:
    """`{"grpc": "host:port", "models": {...}, "pid": N}`, written atomically (the format
    `medmesh up` reads from every service)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(
        json.dumps({"grpc": address, "models": manager.available(), "pid": os.getpid()})
    )
    temporary.replace(path)


async def serve_until(
    config: ModelServerConfig,
    stop: asyncio.Event,
    *,
    address: str,
    poll_seconds: float,
    ready_file: Path | None,
) -> None:
    """Serve until `stop` is set (the `python -m svc_infer.model_server` main loop)."""
    async with running_model_server(config, address=address, poll_seconds=poll_seconds) as running:
        if ready_file is not None:
            write_ready_file(ready_file, running.address, running.manager)
        await stop.wait()
