"""The services behind the edge: one grpc.aio channel per upstream, cached multicallables,
and the request headers that travel upstream as gRPC metadata."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from medmesh.edge.asgi import Request, Send
from medmesh.edge.authz import IDENTITY_HEADERS, Decision
from medmesh.edge.routes import Rpc
from medmesh.server import MAX_MESSAGE_BYTES
from medmesh.transport import grpc_channel

# Headers that carry meaning for the services: the token, tracing, the request id and custom
# `x-` headers. Transport headers (host, content-type, te, ...) stay at the edge.
_FORWARDED_EXACT = frozenset({"authorization", "traceparent", "tracestate", "baggage"})
_NOT_FORWARDED = frozenset({"x-grpc-web", "x-user-agent", *IDENTITY_HEADERS})
_METADATA_KEY = re.compile(r"^[0-9a-z_.-]+$")
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")


def forwarded_metadata(
    headers: Iterable[tuple[str, str]],
    *,
    request_id: str,
    client_ip: str | None,
    decision: Decision | None,
) -> list[tuple[str, str]]:
    """The call metadata for the upstream request.

    Identity headers sent by the client are dropped whatever the authorization service says;
    only the ones it returns go upstream. `x-forwarded-for` gains the client's address.
    """
    metadata: dict[str, str] = {}
    for name, value in headers:
        forwarded = name in _FORWARDED_EXACT or (
            name.startswith("x-") and name not in _NOT_FORWARDED
        )
        if not forwarded or name.endswith("-bin") or not _METADATA_KEY.match(name):
            continue
        if _PRINTABLE.match(value):
            metadata[name] = f"{metadata[name]},{value}" if name in metadata else value
    if client_ip:
        previous = metadata.get("x-forwarded-for")
        metadata["x-forwarded-for"] = f"{previous}, {client_ip}" if previous else client_ip
    metadata["x-request-id"] = request_id
    if decision is not None:
        for name in decision.remove_headers:
            metadata.pop(name, None)
        for name, value in decision.upstream_headers.items():
            if _METADATA_KEY.match(name) and _PRINTABLE.match(value):
                metadata[name] = value
    return list(metadata.items())


class Upstreams:
    """Channels to the services by upstream name (`auth`, `ingest`, `infer`, `report`)."""

    def __init__(self, addresses: Mapping[str, str], *, ca_file: str = "") -> None:
        """`host:port` is plaintext; `https://host:port` is TLS verified against `ca_file`."""
        self.addresses = {name: address for name, address in addresses.items() if address}
        self._channels = {
            name: grpc_channel(
                address,
                ca_file=ca_file,
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ],
            )
            for name, address in self.addresses.items()
        }
        self._callables: dict[tuple[str, bool], Any] = {}

    def channel(self, upstream: str) -> grpc.aio.Channel | None:
        """The channel to an upstream, or None when none is configured."""
        return self._channels.get(upstream)

    def callable(self, rpc: Rpc, *, typed: bool) -> Any:
        """A multicallable for `rpc` on its upstream: typed responses (betterproto2) for REST,
        raw bytes both ways for gRPC-Web. None when the upstream is not configured."""
        key = (rpc.method.path, typed)
        found = self._callables.get(key)
        if found is not None:
            return found
        channel = self.channel(rpc.upstream)
        if channel is None:
            return None
        make = channel.unary_stream if rpc.method.server_streaming else channel.unary_unary
        made = make(
            rpc.method.path,
            request_serializer=bytes if typed else None,
            response_deserializer=rpc.method.response_type.FromString if typed else None,
        )
        self._callables[key] = made
        return made

    async def close(self) -> None:
        """Close every channel (in-flight calls are cancelled)."""
        for channel in self._channels.values():
            await channel.close()


@dataclass(frozen=True)
class Call:
    """One request on its way upstream: what both forwarders (REST, gRPC-Web) need."""

    request: Request
    send: Send
    metadata: list[tuple[str, str]]
    timeout_s: float
    """Deadline of unary calls; streams run until the server ends them or the client leaves."""
    max_body_bytes: int
