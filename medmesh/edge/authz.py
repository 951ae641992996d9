"""External authorization, as Envoy's `envoy.filters.http.ext_authz` does it: before a request
goes upstream, ask `envoy.service.auth.v3.Authorization/Check` (svc_auth) and obey.

The CheckRequest is built the way Envoy builds it for a gRPC authorization service: the
request's method, `:path` (with the query), host, scheme, protocol, every header (pseudo
headers included, names lower-case, repeated values joined with ","), the source and
destination socket addresses and the request id. No body (Envoy's `with_request_body` is
off in envoy/envoy.yaml too).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
from envoy_data_plane.envoy.service.auth.v3 import (
    AttributeContext,
    AttributeContextHttpRequest,
    AttributeContextPeer,
    AttributeContextRequest,
    CheckRequest,
    CheckResponse,
)

CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"

# Requests Envoy does not send to ext_authz (per-route `ext_authz: {disabled: true}` in
# envoy/envoy.yaml): probes and the public signing keys. One table; the edge takes it as a
# constructor argument so a deployment can change it.
UNCHECKED_PATHS: frozenset[str] = frozenset({"/healthz", "/.well-known/jwks.json"})

# What a gateway forwards as caller identity; never trusted from the client (see `Decision`).
IDENTITY_HEADERS: tuple[str, ...] = ("x-medmesh-user", "x-medmesh-clinic", "x-medmesh-roles")


class AuthzUnavailable(RuntimeError):
    """The authorization service could not be asked; the edge fails closed (503)."""


@dataclass(frozen=True)
class HttpRequestInfo:
    """What the edge knows about an incoming request when it asks for a decision."""

    method: str
    path: str
    """`:path` as received: path and query string."""
    headers: Sequence[tuple[str, str]]
    host: str
    scheme: str
    protocol: str
    client: tuple[str, int] | None
    server: tuple[str, int] | None
    request_id: str


@dataclass(frozen=True)
class Decision:
    """The authorization service's answer, in HTTP terms."""

    allowed: bool
    http_status: int = 200
    grpc_code: int = 0
    message: str = ""
    headers: Sequence[tuple[str, str]] = ()
    """Denied: headers of the denial (Retry-After, WWW-Authenticate, content-type)."""
    body: bytes = b""
    upstream_headers: Mapping[str, str] = field(default_factory=dict)
    """Allowed: headers to add to (or overwrite in) the request that goes upstream."""
    remove_headers: frozenset[str] = frozenset()
    response_headers: Sequence[tuple[str, str]] = ()
    """Allowed: headers to add to the response the client gets."""


def _address(peer: tuple[str, int] | None) -> AttributeContextPeer | None:
    if peer is None:
        return None
    host, port = peer[0], peer[1]
    return AttributeContextPeer(
        address=Address(socket_address=SocketAddress(address=host, port_value=port))
    )


def check_request(info: HttpRequestInfo) -> CheckRequest:
    """The CheckRequest Envoy would send for this request."""
    headers: dict[str, str] = {
        ":authority": info.host,
        ":method": info.method,
        ":path": info.path,
        ":scheme": info.scheme,
    }
    for raw_name, value in info.headers:
        name = raw_name.lower()
        if name == "host":
            continue
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    headers.setdefault("x-request-id", info.request_id)
    http = AttributeContextHttpRequest(
        id=info.request_id,
        method=info.method,
        headers=headers,
        path=info.path,
        host=info.host,
        scheme=info.scheme,
        protocol=info.protocol,
        size=int(headers.get("content-length", "-1") or -1),
    )
    return CheckRequest(
        attributes=AttributeContext(
            source=_address(info.client),
            destination=_address(info.server),
            request=AttributeContextRequest(time=datetime.datetime.now(datetime.UTC), http=http),
        )
    )


def decision_of(response: CheckResponse) -> Decision:
    """Read a CheckResponse the way Envoy does: OK → forward with the OK headers; anything
    else → deny with the denial's HTTP status (403 when it names none), headers and body."""
    code = response.status.code if response.status else 0
    message = response.status.message if response.status else ""
    if code == 0:
        ok = response.ok_response
        upstream = {
            h.header.key.lower(): h.header.value for h in (ok.headers if ok else []) if h.header
        }
        return Decision(
            allowed=True,
            upstream_headers=upstream,
            remove_headers=frozenset(k.lower() for k in (ok.headers_to_remove if ok else [])),
            response_headers=[
                (h.header.key.lower(), h.header.value)
                for h in (ok.response_headers_to_add if ok else [])
                if h.header
            ],
        )
    denied = response.denied_response
    status = int(denied.status.code) if denied and denied.status else 0
    return Decision(
        allowed=False,
        http_status=status or 403,
        grpc_code=code,
        message=message,
        headers=[(h.header.key.lower(), h.header.value) for h in denied.headers if h.header]
        if denied
        else [],
        body=denied.body.encode() if denied else b"",
    )


class AuthzClient:
    """Calls Check over one grpc.aio channel with a short deadline."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float) -> None:
        self._check = channel.unary_unary(
            CHECK_PATH, request_serializer=bytes, response_deserializer=CheckResponse.FromString
        )
        self._timeout_s = timeout_s

    async def check(self, info: HttpRequestInfo) -> Decision:
        """The decision for one request; AuthzUnavailable when Check fails or times out."""
        try:
            response = await self._check(check_request(info), timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise AuthzUnavailable(f"authorization check failed: {exc.code().name}") from exc
        return decision_of(response)
