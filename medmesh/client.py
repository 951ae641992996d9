"""Async gRPC stubs built from the descriptor image.

betterproto2 generates typed *sync* stubs only (its async clients are grpclib), so services and
tests call each other through grpc.aio with stubs made here from the same contract: a method
per RPC, snake_case, taking the betterproto2 request and the usual `timeout`/`metadata`.
"""

from __future__ import annotations

from typing import Any

import grpc

from medmesh.contract import DescriptorImage, Method, snake_case


class AsyncStub:
    """`AsyncStub(channel, "medmesh.ingest.v1.IngestService", image).get_study(request)`."""

    def __init__(
        self, channel: grpc.aio.Channel, service_name: str, image: DescriptorImage
    ) -> None:
        self.service_name = service_name
        self._callables: dict[str, Any] = {
            snake_case(m.name): _multicallable(channel, m) for m in image.methods(service_name)
        }

    def __getattr__(self, name: str) -> Any:
        try:
            return self._callables[name]
        except KeyError:
            raise AttributeError(f"{self.service_name} has no RPC {name!r}") from None


def _multicallable(channel: grpc.aio.Channel, method: Method) -> Any:
    make = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    return make(
        method.path,
        request_serializer=bytes,
        response_deserializer=method.response_type.FromString,
    )
