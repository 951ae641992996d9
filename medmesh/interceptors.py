"""Server interceptors installed by the bootstrap on every service, innermost last:

    metrics → logging → deadline → error mapping → handler

Error mapping is innermost so the outer ones see the final status code via `context.code()`.
Server-streaming handlers return async generators; each interceptor wraps the generator rather
than awaiting it, so errors raised mid-stream are mapped and counted too.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_interceptor.server import AsyncServerInterceptor, parse_method_name
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

from medmesh import errors

_log = structlog.get_logger("medmesh.grpc")

_STATUS_OF: list[tuple[type[errors.DomainError], int]] = [
    (errors.InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (errors.NotFound, code_pb2.NOT_FOUND),
    (errors.AlreadyExists, code_pb2.ALREADY_EXISTS),
    (errors.PermissionDenied, code_pb2.PERMISSION_DENIED),
    (errors.Unauthenticated, code_pb2.UNAUTHENTICATED),
    (errors.FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (errors.ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
    (errors.DependencyUnavailable, code_pb2.UNAVAILABLE),
    (errors.DataLoss, code_pb2.DATA_LOSS),
]

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "medmesh_deadline", default=None
)


def remaining_time(default: float | None = None) -> float | None:
    """Seconds left before the current RPC's deadline (monotonic), or `default` when it has none.

    Outgoing calls made while handling an RPC pass this as their own timeout, so a caller's
    deadline propagates through the mesh instead of each hop waiting its own full timeout.
    """
    deadline = _deadline.get()
    if deadline is None:
        return default
    return max(0.0, deadline - time.monotonic())


def status_for(error: errors.DomainError) -> status_pb2.Status:
    """The `google.rpc.Status` (with details) that a domain error becomes on the wire."""
    code = next((c for cls, c in _STATUS_OF if isinstance(error, cls)), code_pb2.UNKNOWN)
    status = status_pb2.Status(code=code, message=error.message)
    if isinstance(error, errors.InvalidArgument) and error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        status.details.append(_pack(bad_request))
    if isinstance(error, errors.ResourceExhausted) and error.violations:
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=v.subject, description=v.description
                )
                for v in error.violations
            ]
        )
        status.details.append(_pack(quota))
    if isinstance(error, errors.ResourceExhausted) and error.retry_after_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(error.retry_after_s * 1e9))
        status.details.append(_pack(retry))
    return status


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _is_stream(result: Any) -> bool:
    return hasattr(result, "__aiter__")


class ErrorMappingInterceptor(AsyncServerInterceptor):
    """Turns domain errors into gRPC statuses with `google.rpc` details; anything unexpected
    becomes INTERNAL with a generic message (the traceback goes to the log, never the client)."""

    async def intercept(
        self, method: Callable, request: Any, context: Any, method_name: str
    ) -> Any:
        try:
            result = method(request, context)
            if _is_stream(result):
                return self._guard_stream(result, context, method_name)
            return await result
        except Exception as exc:  # noqa: BLE001 - every failure must become a status
            await self._abort(exc, context, method_name)

    async def _guard_stream(self, stream: AsyncIterator, context: Any, method_name: str) -> Any:
        try:
            async for item in stream:
                yield item
        except Exception as exc:  # noqa: BLE001 - every failure must become a status
            await self._abort(exc, context, method_name)

    @staticmethod
    async def _abort(exc: Exception, context: Any, method_name: str) -> None:
        if isinstance(exc, errors.DomainError):
            await context.abort_with_status(rpc_status.to_status(status_for(exc)))
        if _is_grpc_abort(exc):
            raise exc
        _log.exception("unhandled error", method=method_name)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _is_grpc_abort(exc: Exception) -> bool:
    # `context.abort()` signals by raising grpc.aio's AbortError; it must pass through untouched.
    return type(exc).__name__ == "AbortError" or isinstance(exc, grpc.RpcError)


class DeadlineInterceptor(AsyncServerInterceptor):
    """Records the caller's deadline so `remaining_time()` can pass it on to outgoing calls."""

    async def intercept(
        self, method: Callable, request: Any, context: Any, method_name: str
    ) -> Any:
        remaining = context.time_remaining()
        token = _deadline.set(None if remaining is None else time.monotonic() + remaining)
        try:
            result = method(request, context)
            return result if _is_stream(result) else await result
        finally:
            _deadline.reset(token)


_INT_CODES = {c.value[0]: c.name for c in grpc.StatusCode}


def status_code_name(context: Any, failed: bool) -> str:
    """The final status of an RPC as its upper-case name (`OK`, `NOT_FOUND`, ...)."""
    code = context.code()
    if code is None:
        return "UNKNOWN" if failed else "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _INT_CODES.get(int(code), "UNKNOWN")


class _ObservingInterceptor(AsyncServerInterceptor):
    """Calls `finished(...)` exactly once per RPC; for streams, when the stream ends.

    A stream the client cancelled while its generator was suspended at a `yield` ends when
    asyncio finalises the generator, after grpc has released the call: `context.peer()` then
    reads a freed C call and segfaults the process (svc_ingest died so under load). So the
    peer is read while the RPC is alive; at the end only `context.code()` (a Python attribute
    of the call's state) is read. An RPC abandoned that way (or whose task was cancelled)
    ends CANCELLED, not UNKNOWN: the client went away, the server did not fail."""

    async def intercept(
        self, method: Callable, request: Any, context: Any, method_name: str
    ) -> Any:
        started = time.perf_counter()
        peer = context.peer()
        self.started(method_name)
        try:
            result = method(request, context)
            if _is_stream(result):
                return self._observe_stream(result, context, method_name, started, peer)
            response = await result
        except asyncio.CancelledError:
            self.finished(
                method_name, _ended_by_client(context), time.perf_counter() - started, peer
            )
            raise
        except BaseException:
            code = status_code_name(context, failed=True)
            self.finished(method_name, code, time.perf_counter() - started, peer)
            raise
        code = status_code_name(context, failed=False)
        self.finished(method_name, code, time.perf_counter() - started, peer)
        return response

    async def _observe_stream(
        self, stream: AsyncIterator, context: Any, method_name: str, started: float, peer: str
    ) -> Any:
        code = "UNKNOWN"
        try:
            async for item in stream:
                yield item
            code = status_code_name(context, failed=False)
        except (GeneratorExit, asyncio.CancelledError):
            code = _ended_by_client(context)
            raise
        except BaseException:
            code = status_code_name(context, failed=True)
            raise
        finally:
            self.finished(method_name, code, time.perf_counter() - started, peer)

    def started(self, method_name: str) -> None:
        """Hook: an RPC arrived."""

    def finished(self, method_name: str, code: str, seconds: float, peer: str) -> None:
        """Hook: an RPC ended with status `code` (`OK`, `NOT_FOUND`, ...)."""


def _ended_by_client(context: Any) -> str:
    """The status of an RPC whose handler was cancelled or abandoned: the one it set, if any."""
    code = context.code()
    return "CANCELLED" if code is None else status_code_name(context, failed=True)


_STARTED = Counter(
    "grpc_server_started_total", "RPCs started on the server.", ["grpc_service", "grpc_method"]
)
_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
_LATENCY = Histogram(
    "grpc_server_handling_seconds",
    "Time from an RPC's arrival to its completion.",
    ["grpc_service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class MetricsInterceptor(_ObservingInterceptor):
    """Prometheus rate, latency and status codes per method (go-grpc-prometheus names)."""

    def started(self, method_name: str) -> None:
        name = parse_method_name(method_name)
        _STARTED.labels(name.fully_qualified_service, name.method).inc()

    def finished(self, method_name: str, code: str, seconds: float, peer: str) -> None:
        name = parse_method_name(method_name)
        service, rpc = name.fully_qualified_service, name.method
        _HANDLED.labels(service, rpc, code).inc()
        _LATENCY.labels(service, rpc).observe(seconds)


class LoggingInterceptor(_ObservingInterceptor):
    """One JSON line per RPC: method, status code, duration. Never the request body (PHI)."""

    def finished(self, method_name: str, code: str, seconds: float, peer: str) -> None:
        log = _log.warning if code in _SERVER_FAULTS else _log.info
        log(
            "rpc",
            method=method_name,
            code=code,
            duration_ms=round(seconds * 1000, 2),
            peer=peer,
        )


_SERVER_FAULTS = frozenset({"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "DEADLINE_EXCEEDED"})


def default_interceptors(
    innermost: Sequence[AsyncServerInterceptor] = (),
) -> list[AsyncServerInterceptor]:
    """The chain every medmesh server installs, outermost first; `innermost` (authentication)
    runs inside error mapping so that its domain errors become statuses too."""
    return [
        MetricsInterceptor(),
        LoggingInterceptor(),
        DeadlineInterceptor(),
        ErrorMappingInterceptor(),
        *innermost,
    ]
