"""REST requests forwarded as typed gRPC calls.

Unary: one JSON response, or the error as google.rpc.Status JSON with the mapped HTTP status
(and Retry-After when the status carries a RetryInfo). Server streaming (WatchStudy):
newline-delimited JSON, one message per line, `application/x-ndjson`, flushed as each message
arrives. The status line waits for the first message, so an error before it (NOT_FOUND, ...)
is still a proper HTTP error; an error after it can only be told in-band, as a last line
`{"error": <google.rpc.Status>}`. When the client disconnects, the upstream call is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import grpc
from google.rpc import status_pb2

from medmesh.edge.asgi import BodyTooLarge, encode_headers, send_response
from medmesh.edge.routes import RestMatch
from medmesh.edge.status import (
    error_body,
    http_status,
    retry_after,
    status_json,
    status_of,
    status_of_domain_error,
    status_of_error,
)
from medmesh.edge.transcode import build_request, response_json
from medmesh.edge.upstreams import Call, Upstreams
from medmesh.errors import InvalidArgument

JSON = ("content-type", "application/json")
NDJSON = ("content-type", "application/x-ndjson")


async def send_status(call: Call, status: status_pb2.Status, http: int | None = None) -> int:
    """An error response: google.rpc.Status JSON, its HTTP status, Retry-After if known."""
    headers = [JSON]
    delay = retry_after(status)
    if delay is not None:
        headers.append(("retry-after", delay))
    await send_response(call.send, http or http_status(status.code), headers, error_body(status))
    return status.code


async def forward_rest(call: Call, match: RestMatch, upstreams: Upstreams) -> int:
    """Transcode, forward, answer. Returns the final gRPC code (for logs and metrics)."""
    rpc = match.route.rpc
    try:
        body = await call.request.body(call.max_body_bytes)
        message = build_request(match, call.request.query(), body)
    except BodyTooLarge as exc:
        status = status_of(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return await send_status(call, status, http=413)
    except InvalidArgument as exc:
        return await send_status(call, status_of_domain_error(exc))
    multicallable = upstreams.callable(rpc, typed=True)
    if multicallable is None:
        unavailable = f"no upstream is configured for {rpc.method.service}"
        return await send_status(call, status_of(grpc.StatusCode.UNAVAILABLE, unavailable))
    if rpc.method.server_streaming:
        return await _stream(call, match, multicallable(message, metadata=call.metadata))
    try:
        response = await multicallable(message, metadata=call.metadata, timeout=call.timeout_s)
    except grpc.aio.AioRpcError as exc:
        return await send_status(call, status_of_error(exc))
    await send_response(call.send, 200, [JSON], response_json(response, match.route.response_body))
    return 0


async def _stream(call: Call, match: RestMatch, upstream: Any) -> int:
    client_gone = asyncio.Event()

    async def watch_client() -> None:
        await call.request.wait_disconnect()
        client_gone.set()
        upstream.cancel()

    watcher = asyncio.create_task(watch_client())
    try:
        return await _relay(call, match, upstream, client_gone)
    except asyncio.CancelledError:
        if client_gone.is_set():
            return grpc.StatusCode.CANCELLED.value[0]
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _relay(call: Call, match: RestMatch, upstream: Any, client_gone: asyncio.Event) -> int:
    responses = upstream.__aiter__()
    try:
        first = await anext(responses, None)
    except grpc.aio.AioRpcError as exc:
        if client_gone.is_set():
            return exc.code().value[0]
        return await send_status(call, status_of_error(exc))
    await call.send(
        {"type": "http.response.start", "status": 200, "headers": encode_headers([NDJSON])}
    )
    code = 0
    try:
        if first is not None:
            await _line(call, response_json(first, match.route.response_body))
            async for message in responses:
                await _line(call, response_json(message, match.route.response_body))
    except grpc.aio.AioRpcError as exc:
        code = exc.code().value[0]
        if not client_gone.is_set():
            error = json.dumps({"error": status_json(status_of_error(exc))}).encode()
            await _line(call, error)
    await call.send({"type": "http.response.body", "body": b"", "more_body": False})
    return code


async def _line(call: Call, data: bytes) -> None:
    await call.send({"type": "http.response.body", "body": data + b"\n", "more_body": True})
