"""Async gRPC stubs built from the descriptor image.

betterproto2 generates typed *sync* stubs only (its async clients are grpclib), so services and
tests call each other through grpc.aio with stubs made here from the same contract: a method
per RPC, snake_case, taking the betterproto2 request and the usual `timeout`/`metadata`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    response_type: Any = method.response_type  # a betterproto2 message class
    return make(
        method.path,
        request_serializer=bytes,
        response_deserializer=response_type.FromString,
    )


async def call_json(
    address: str,
    method_path: str,
    request_json: Mapping[str, Any],
    *,
    image: DescriptorImage,
    metadata: Sequence[tuple[str, str]] = (),
    timeout_s: float = 30.0,
) -> list[dict[str, Any]]:
    """Call a unary or server-streaming RPC with a proto-JSON request; the responses as
    proto-JSON. What `medmesh call` runs (a grpcurl for the contract, with no extra tool)."""
    service, _, name = method_path.strip("/").rpartition("/")
    method = next((m for m in image.methods(service) if m.name == name), None)
    if method is None:
        raise KeyError(f"{method_path} is not in the contract")
    if method.client_streaming:
        raise ValueError(f"{method_path} is client-streaming; use a gRPC client library")
    request_type: Any = method.request_type  # a betterproto2 message class
    request = request_type.from_dict(dict(request_json))
    async with grpc.aio.insecure_channel(address) as channel:
        callable_ = _multicallable(channel, method)
        if method.server_streaming:
            return [
                response.to_dict()
                async for response in callable_(request, metadata=metadata, timeout=timeout_s)
            ]
        response = await callable_(request, metadata=metadata, timeout=timeout_s)
        return [response.to_dict()]
