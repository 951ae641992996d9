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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
# envoy/envoy.yaml): probes, the public signing keys and the OpenAPI document. One table; the
# edge takes it as a constructor argument so a deployment can change it.
UNCHECKED_PATHS: frozenset[str] = frozenset({"/healthz", "/.well-known/jwks.json", "/openapi.json"})

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


def envoy_headers(info: HttpRequestInfo) -> dict[str, str]:
    """The request's headers as Envoy passes them to ext_authz: pseudo headers first, names
    lower-case, repeated values joined with ",", `x-request-id` always present."""
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
    return headers


def _content_length(headers: Mapping[str, str]) -> int:
    return int(headers.get("content-length", "-1") or -1)


def check_request(info: HttpRequestInfo, *, now: datetime.datetime | None = None) -> CheckRequest:
    """The CheckRequest Envoy would send for this request (typed; the edge sends the same
    message written by `encode_check_request`)."""
    headers = envoy_headers(info)
    http = AttributeContextHttpRequest(
        id=info.request_id,
        method=info.method,
        headers=headers,
        path=info.path,
        host=info.host,
        scheme=info.scheme,
        protocol=info.protocol,
        size=_content_length(headers),
    )
    return CheckRequest(
        attributes=AttributeContext(
            source=_address(info.client),
            destination=_address(info.server),
            request=AttributeContextRequest(
                time=now or datetime.datetime.now(datetime.UTC), http=http
            ),
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


# The wire forms of CheckRequest and CheckResponse, written and read directly: building and
# serialising the request with envoy-data-plane's classes costs ~0.7 ms per request (pydantic
# validation, a warnings context per default value), more than the Check round trip itself.
# Field numbers are those of envoy/service/auth/v3/{external_auth,attribute_context}.proto,
# envoy/config/core/v3/{address,base}.proto and google/rpc/status.proto; the typed builder
# above stays the reference the tests compare with (tests/unit/test_edge_authz_wire.py).


_SMALL_VARINTS = tuple(bytes((value,)) for value in range(0x80))


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL_VARINTS[value]
    if value < 0:
        value += 1 << 64  # int32/int64 negatives: ten bytes of two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _str_field(number: int, value: str) -> bytes:
    return _len_field(number, value.encode()) if value else b""


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _peer_bytes(peer: tuple[str, int] | None) -> bytes:
    # Peer.address (1) → Address.socket_address (1) → SocketAddress address (2), port (3).
    if peer is None:
        return b""
    # port_value is a oneof member (port_specifier): written even when it is 0.
    socket_address = _str_field(2, peer[0]) + _varint(3 << 3) + _varint(peer[1])
    return _len_field(1, _len_field(1, socket_address))


def encode_check_request(info: HttpRequestInfo, *, now_ns: int | None = None) -> bytes:
    """`bytes(check_request(info))`, written directly (same fields, same values)."""
    headers = envoy_headers(info)
    entries = b"".join(
        _len_field(3, _len_field(1, name.encode()) + _len_field(2, value.encode()))
        for name, value in headers.items()
    )
    http = b"".join(
        (
            _str_field(1, info.request_id),
            _str_field(2, info.method),
            entries,
            _str_field(4, info.path),
            _str_field(5, info.host),
            _str_field(6, info.scheme),
            _int_field(9, _content_length(headers)),
            _str_field(10, info.protocol),
        )
    )
    now = time.time_ns() if now_ns is None else now_ns
    seconds, nanos = divmod(now, 1_000_000_000)
    timestamp = _int_field(1, seconds) + _int_field(2, nanos)
    request = _len_field(1, timestamp) + _len_field(2, http)
    attributes = b"".join(
        (
            _len_field(1, _peer_bytes(info.client)) if info.client is not None else b"",
            _len_field(2, _peer_bytes(info.server)) if info.server is not None else b"",
            _len_field(4, request),
        )
    )
    return _len_field(1, attributes)


def _fields(data: bytes | memoryview) -> list[tuple[int, int, Any]]:
    """(number, wire type, value) of each field of a message: varints as unsigned ints,
    length-delimited fields as views; fixed-size fields are read past."""
    view = memoryview(data)
    out: list[tuple[int, int, Any]] = []
    position, end = 0, len(view)

    def varint() -> int:
        nonlocal position
        result, shift = 0, 0
        while True:
            if position >= end or shift > 63:
                raise ValueError("truncated or overlong varint")
            byte = view[position]
            position += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    while position < end:
        key = varint()
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            out.append((number, 0, varint()))
        elif wire_type == 2:
            length = varint()
            if position + length > end:
                raise ValueError("truncated length-delimited field")
            out.append((number, 2, view[position : position + length]))
            position += length
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    if position != end:
        raise ValueError("truncated fixed-size field")
    return out


def _merged(data: bytes | memoryview) -> dict[int, bytes]:
    """Singular message fields by number; repeats merge (concatenated, as protobuf does)."""
    merged: dict[int, bytes] = {}
    for number, wire_type, value in _fields(data):
        if wire_type == 2:
            merged[number] = merged.get(number, b"") + bytes(value)
    return merged


def _header_values(options: list[memoryview]) -> list[tuple[str, str]]:
    """(lower-case key, value) of HeaderValueOptions whose `header` has a field set."""
    pairs: list[tuple[str, str]] = []
    for option in options:
        header = _merged(option).get(1)
        if header is None:
            continue
        key, value, raw = "", "", False
        for number, wire_type, item in _fields(header):
            if wire_type != 2:
                continue
            if number == 1:
                key = bytes(item).decode()
            elif number == 2:
                value = bytes(item).decode()
            elif number == 3:
                raw = raw or len(item) > 0
        if key or value or raw:
            pairs.append((key.lower(), value))
    return pairs


def _repeated(data: bytes, number: int) -> list[memoryview]:
    return [v for n, t, v in _fields(data) if n == number and t == 2]


def decode_decision(data: bytes) -> Decision:
    """`decision_of(CheckResponse.FromString(data))`, read directly from the wire."""
    parts = _merged(data)
    code, message = 0, ""
    for number, wire_type, value in _fields(parts.get(1, b"")):
        if number == 1 and wire_type == 0:
            code = _int32(value)
        elif number == 2 and wire_type == 2:
            message = bytes(value).decode()
    if code == 0:
        ok = parts.get(3, b"")
        remove = [bytes(v).decode().lower() for v in _repeated(ok, 5)]
        return Decision(
            allowed=True,
            upstream_headers=dict(_header_values(_repeated(ok, 2))),
            remove_headers=frozenset(remove),
            response_headers=_header_values(_repeated(ok, 6)),
        )
    denied = parts.get(2, b"")
    status, body = 0, b""
    for number, wire_type, value in _fields(denied):
        if number == 1 and wire_type == 2:
            codes = [_int32(v) for n, t, v in _fields(value) if n == 1 and t == 0]
            status = codes[-1] if codes else status
        elif number == 3 and wire_type == 2:
            body = bytes(value)
    return Decision(
        allowed=False,
        http_status=status or 403,
        grpc_code=code,
        message=message,
        headers=_header_values(_repeated(denied, 2)),
        body=body,
    )


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


class AuthzClient:
    """Calls Check over one grpc.aio channel with a short deadline."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float) -> None:
        # Raw bytes both ways: the wire forms are written and read by `authz_wire`, not by
        # envoy-data-plane's validating classes (~0.7 ms per request on the hot path).
        self._check = channel.unary_unary(
            CHECK_PATH, request_serializer=None, response_deserializer=None
        )
        self._timeout_s = timeout_s

    async def check(self, info: HttpRequestInfo) -> Decision:
        """The decision for one request; AuthzUnavailable when Check fails or times out."""
        try:
            response = await self._check(encode_check_request(info), timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise AuthzUnavailable(f"authorization check failed: {exc.code().name}") from exc
        try:
            return decode_decision(response)
        except ValueError as exc:  # what a failed typed deserializer became: fail closed
            raise AuthzUnavailable("authorization check failed: unreadable response") from exc
