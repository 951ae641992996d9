"""gRPC-Web requests forwarded as gRPC calls with the payload bytes untouched.

The request's one message frame goes upstream as it is (identity serializers); each response
message becomes a frame as it arrives, then the trailer frame carries grpc-status,
grpc-message and the call's trailing metadata (grpc-status-details-bin included). Failures
the edge detects itself (no such RPC, a bad body, a refusal by ext_authz) are answered
"trailers-only": HTTP 200 with grpc-status in the headers and no body, as Envoy does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import grpc

from medmesh.edge import grpcweb
from medmesh.edge.asgi import BodyTooLarge, Send, encode_headers, send_response
from medmesh.edge.routes import Rpc
from medmesh.edge.upstreams import Call, Upstreams

# Metadata that is transport, not application: never copied into response headers/trailers.
_RESERVED = frozenset(
    {"content-type", "grpc-status", "grpc-message", "grpc-encoding", "grpc-accept-encoding"}
)


def _application(metadata: Iterable[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in metadata or () if k not in _RESERVED and not k.startswith(":")]


async def send_trailers_only(
    send: Send,
    text: bool,
    code: int,
    message: str,
    headers: Sequence[tuple[str, str]] = (),
) -> int:
    """A local reply to a gRPC-Web client: the status in the response headers."""
    status_headers = [
        ("content-type", grpcweb.response_content_type(text)),
        ("grpc-status", str(code)),
        *([("grpc-message", grpcweb.encode_grpc_message(message))] if message else []),
        *headers,
    ]
    await send_response(send, 200, status_headers)
    return code


class _LocalReply(Exception):
    """A failure the edge answers itself, before anything goes upstream."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code.value[0]
        self.message = message


async def _request_payload(call: Call, rpc: Rpc | None, text: bool) -> bytes:
    if rpc is None:
        raise _LocalReply(grpc.StatusCode.UNIMPLEMENTED, f"{call.request.raw_path}?")
    if rpc.method.client_streaming:
        unsupported = f"{rpc.name} is client-streaming: call it over gRPC, not gRPC-Web"
        raise _LocalReply(grpc.StatusCode.UNIMPLEMENTED, unsupported)
    try:
        body = await call.request.body(call.max_body_bytes)
        messages = grpcweb.decode_messages(grpcweb.decode_text(body) if text else body)
    except BodyTooLarge as exc:
        raise _LocalReply(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
    except grpcweb.GrpcWebError as exc:
        raise _LocalReply(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    if len(messages) > 1:
        several = f"{rpc.name} takes one request message, got {len(messages)}"
        raise _LocalReply(grpc.StatusCode.INVALID_ARGUMENT, several)
    return messages[0] if messages else b""


async def forward_grpc_web(call: Call, rpc: Rpc | None, upstreams: Upstreams) -> int:
    """Unwrap, forward, re-frame. Returns the final gRPC code (for logs and metrics)."""
    text = grpcweb.is_text(call.request.header("content-type"))
    try:
        payload = await _request_payload(call, rpc, text)
    except _LocalReply as reply:
        return await send_trailers_only(call.send, text, reply.code, reply.message)
    assert rpc is not None  # _request_payload refuses a missing RPC
    multicallable = upstreams.callable(rpc, typed=False)
    if multicallable is None:
        unavailable = f"no upstream is configured for {rpc.method.service}"
        code = grpc.StatusCode.UNAVAILABLE.value[0]
        return await send_trailers_only(call.send, text, code, unavailable)
    deadline = grpcweb.parse_timeout(call.request.header("grpc-timeout"))
    if rpc.method.server_streaming:
        upstream = multicallable(payload, metadata=call.metadata, timeout=deadline)
        return await _stream(call, text, upstream)
    upstream = multicallable(payload, metadata=call.metadata, timeout=deadline or call.timeout_s)
    return await _unary(call, text, upstream)


async def _unary(call: Call, text: bool, upstream: Any) -> int:
    try:
        body = grpcweb.message_frame(await upstream)
        code, message = 0, ""
    except grpc.aio.AioRpcError as exc:
        body, code, message = b"", exc.code().value[0], exc.details() or ""
    trailers = _application(await upstream.trailing_metadata())
    body += grpcweb.trailer_frame(code, message, trailers)
    headers = [
        ("content-type", grpcweb.response_content_type(text)),
        *grpcweb.header_values(_application(await upstream.initial_metadata())),
    ]
    await send_response(call.send, 200, headers, grpcweb.encode_chunk(body, text))
    return code


async def _stream(call: Call, text: bool, upstream: Any) -> int:
    client_gone = asyncio.Event()

    async def watch_client() -> None:
        await call.request.wait_disconnect()
        client_gone.set()
        upstream.cancel()

    watcher = asyncio.create_task(watch_client())
    try:
        return await _relay(call, text, upstream)
    except asyncio.CancelledError:
        if client_gone.is_set():
            return grpc.StatusCode.CANCELLED.value[0]
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _relay(call: Call, text: bool, upstream: Any) -> int:
    headers = [
        ("content-type", grpcweb.response_content_type(text)),
        *grpcweb.header_values(_application(await upstream.initial_metadata())),
    ]
    await call.send(
        {"type": "http.response.start", "status": 200, "headers": encode_headers(headers)}
    )
    code, message = 0, ""
    try:
        async for response in upstream:
            frame = grpcweb.encode_chunk(grpcweb.message_frame(response), text)
            await call.send({"type": "http.response.body", "body": frame, "more_body": True})
    except grpc.aio.AioRpcError as exc:
        code, message = exc.code().value[0], exc.details() or ""
    trailers = _application(await upstream.trailing_metadata())
    last = grpcweb.encode_chunk(grpcweb.trailer_frame(code, message, trailers), text)
    await call.send({"type": "http.response.body", "body": last, "more_body": False})
    return code
