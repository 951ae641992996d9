"""The gRPC server every service runs: servicers bound generically from the descriptor image,
reflection, the standard health service, the interceptor chain, and a graceful stop."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_interceptor.server import AsyncServerInterceptor
from grpc_reflection.v1alpha import reflection

from medmesh.contract import DescriptorImage, Method, snake_case
from medmesh.interceptors import default_interceptors

_log = structlog.get_logger("medmesh.server")

# Large enough for a 1 MiB upload chunk plus its envelope; bigger files stream in chunks.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# What one stream may send ahead of its handler. gRPC's default (window auto-tuned by BDP
# probes) let a fast client park 40+ MiB of an upload in a slow service (measured); a fixed
# 4 MiB window keeps a stream's buffering bounded at the same throughput on fast links
# (bench/bench_ingest_upload.py); over a WAN it caps one stream at 4 MiB per round trip.
STREAM_WINDOW_BYTES = 4 * 1024 * 1024


def _unimplemented(method: Method) -> Callable[..., Any]:
    async def handler(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method.path} is not implemented yet")

    if method.server_streaming:

        async def stream_handler(_request: Any, context: grpc.aio.ServicerContext) -> Any:
            await handler(_request, context)
            yield  # pragma: no cover - abort raises first; the yield makes this a generator

        return stream_handler
    return handler


# A servicer may name its own request parser per RPC: {"UploadFile": parse}, see bind_servicer.
REQUEST_DESERIALIZERS = "request_deserializers"


def _method_handler(method: Method, servicer: object) -> grpc.RpcMethodHandler:
    implementation = getattr(servicer, snake_case(method.name), None) or _unimplemented(method)
    own: Mapping[str, Callable[[bytes], Any]] = getattr(servicer, REQUEST_DESERIALIZERS, {})
    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(method.client_streaming, method.server_streaming)]
    return factory(
        implementation,
        request_deserializer=own.get(method.name, method.request_type.FromString),
        response_serializer=bytes,
    )


def bind_servicer(
    image: DescriptorImage, service_name: str, servicer: object
) -> grpc.GenericRpcHandler:
    """A generic handler serving every RPC of `service_name` from the methods of `servicer`.

    The servicer method for `GetStudy` is `get_study(request, context)`; RPCs it does not define
    answer UNIMPLEMENTED. Requests arrive as betterproto2 messages; responses are serialised
    with `bytes(message)`.

    A servicer whose requests are mostly bytes may set `request_deserializers = {"RpcName":
    parse}`: `parse(data: bytes)` must return the same betterproto2 request type that
    `FromString` would (and raise like it on a malformed message); RPCs not named keep
    `FromString`. svc_ingest uses it for UploadFile's 1 MiB chunk messages.
    """
    methods = image.methods(service_name)
    unknown = set(getattr(servicer, REQUEST_DESERIALIZERS, {})) - {m.name for m in methods}
    if unknown:
        raise ValueError(f"{service_name} has no RPC {sorted(unknown)} to deserialize for")
    handlers = {m.name: _method_handler(m, servicer) for m in methods}
    return grpc.method_handlers_generic_handler(service_name, handlers)


class GrpcServer:
    """A grpc.aio server for one or more contract services, with reflection and health."""

    def __init__(
        self,
        image: DescriptorImage,
        servicers: Mapping[str, object],
        *,
        address: str = "127.0.0.1:0",
        extra_handlers: Sequence[grpc.GenericRpcHandler] = (),
        extra_service_names: Sequence[str] = (),
        interceptors: Sequence[AsyncServerInterceptor] = (),
        tls_cert_file: str = "",
        tls_key_file: str = "",
    ) -> None:
        self._image = image
        self._tls_files = (tls_cert_file, tls_key_file) if tls_cert_file else None
        self._servicers = dict(servicers)
        self._requested_address = address
        self.health = health_aio.HealthServicer()
        self.address = ""
        self._server = grpc.aio.server(
            interceptors=default_interceptors(interceptors),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        for name, servicer in self._servicers.items():
            self._server.add_generic_rpc_handlers((bind_servicer(image, name, servicer),))
        if extra_handlers:
            self._server.add_generic_rpc_handlers(tuple(extra_handlers))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self._service_names = [*self._servicers, *extra_service_names]
        reflection.enable_server_reflection(
            [
                *self._servicers,
                reflection.SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            ],
            self._server,
            pool=image.pool,
        )

    async def start(self) -> str:
        """Bind, start serving, and mark every service SERVING. Returns `host:port`."""
        host, _, _ = self._requested_address.rpartition(":")
        if self._tls_files is None:
            port = self._server.add_insecure_port(self._requested_address)
        else:
            # TLS only: with a certificate configured there is no plaintext port to fall to.
            cert_file, key_file = self._tls_files
            credentials = grpc.ssl_server_credentials(
                [(Path(key_file).read_bytes(), Path(cert_file).read_bytes())]
            )
            port = self._server.add_secure_port(self._requested_address, credentials)
        if port == 0:
            raise OSError(f"cannot bind gRPC server to {self._requested_address}")
        await self._server.start()
        self.address = f"{host}:{port}"
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)
        _log.info("grpc server serving", address=self.address, services=self._service_names)
        return self.address

    async def stop(self, grace_s: float) -> None:
        """Graceful stop: report NOT_SERVING (load balancers stop routing here), refuse new RPCs,
        give in-flight ones `grace_s` seconds to finish, then cancel what is left."""
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        _log.info("grpc server draining", grace_s=grace_s)
        await self._server.stop(grace_s)
        _log.info("grpc server stopped")

    async def _set_all(self, status: int) -> None:
        await self.health.set("", status)
        for name in self._service_names:
            await self.health.set(name, status)
