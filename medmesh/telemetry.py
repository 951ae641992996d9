"""Telemetry set up once per process: structlog JSON logs carrying trace ids (the stdlib logs
of libraries too), OpenTelemetry tracing exported over OTLP with gRPC, PostgreSQL and Redis
instrumented, the trace context carried across JetStream, and a Prometheus `/metrics` endpoint.

One study is one trace: the UploadFile server span → the outbox row (its headers keep the
context) → the relay's `send` span → svc_infer's per-job `process` span (the batch span of a
micro-batch has a link to every job's producer instead of a parent) → the ResultReady /
StudyResultsReady rows written with that job's context → svc_report's `process` spans → the
report-ready mail's span.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, Span, SpanKind
from prometheus_client import Histogram, start_http_server

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

DB_QUERY_SECONDS = Histogram(
    "medmesh_db_query_seconds",
    "Duration of one PostgreSQL statement (from the psycopg client spans), by its verb.",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
REDIS_COMMAND_SECONDS = Histogram(
    "medmesh_redis_command_seconds",
    "Duration of one Redis command or pipeline (from the redis-py client spans).",
    ["command"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2),
)
_SQL_VERBS = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "BEGIN", "COMMIT", "ROLLBACK", "LISTEN"}
)


def _add_trace_ids(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Stamp each log line with the current span's ids so logs and Jaeger traces join up."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event["trace_id"] = format(span_context.trace_id, "032x")
        event["span_id"] = format(span_context.span_id, "016x")
    return event


def configure_logging(service: str, level: str = "info") -> None:
    """JSON lines on stdout (Filebeat ships them): one object per event, with trace ids.

    Libraries that log through the stdlib (grpc, nats, yoyo, psycopg_pool) are rendered by the
    same processors (structlog's ProcessorFormatter): their lines are JSON with the same keys,
    plus `logger`, and carry the trace ids of the span they were logged in.
    """
    numeric = _LEVELS.get(level, logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
    ]
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(service=service)


class _BackgroundCallsUnsampled(Sampler):
    """Root sampler: a client call (PostgreSQL, Redis, gRPC) made outside any request or job —
    the outbox relay's polls and pruning, key refreshes, health pings — is recorded (the
    query-time metrics see it) but not exported, so Jaeger is not flooded with one-span traces
    every second. Every other root span (a server span, a job's consumer span) is sampled.
    The instrumentations set their attributes after the sampler ran, so the kind decides."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        background = kind == SpanKind.CLIENT
        return SamplingResult(
            Decision.RECORD_ONLY if background else Decision.RECORD_AND_SAMPLE, attributes
        )

    def get_description(self) -> str:
        return "BackgroundCallsUnsampled"


class _QueryTimeMetrics(SpanProcessor):
    """Feeds `medmesh_db_query_seconds` and `medmesh_redis_command_seconds` from the psycopg
    and redis instrumentations' client spans (sampled or not)."""

    def on_end(self, span: ReadableSpan) -> None:
        attributes = span.attributes or {}
        system = attributes.get("db.system.name", attributes.get("db.system"))
        if system not in {"postgresql", "redis"} or span.start_time is None:
            return
        seconds = ((span.end_time or span.start_time) - span.start_time) / 1e9
        verb = span.name.split(" ", 1)[0].upper()
        if system == "postgresql":
            DB_QUERY_SECONDS.labels(verb if verb in _SQL_VERBS else "OTHER").observe(seconds)
        elif "db.redis.pipeline_length" in attributes:
            REDIS_COMMAND_SECONDS.labels("PIPELINE").observe(seconds)
        else:  # the command's name: a fixed vocabulary, never a key
            REDIS_COMMAND_SECONDS.labels(verb[:24]).observe(seconds)


def new_tracer_provider(service: str) -> TracerProvider:
    """A tracer provider with medmesh's sampler and the query-time metrics processor; spans
    are exported by whatever processors the caller adds."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"medmesh-{service}"}),
        sampler=ParentBased(root=_BackgroundCallsUnsampled()),
    )
    provider.add_span_processor(_QueryTimeMetrics())
    return provider


def configure_tracing(service: str, otlp_endpoint: str) -> TracerProvider:
    """Install the process's tracer provider; spans go to `otlp_endpoint` when one is set."""
    provider = new_tracer_provider(service)
    if otlp_endpoint:
        # Imported lazily: the exporter pulls in its own gRPC channel machinery.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True))
        )
    trace.set_tracer_provider(provider)
    return provider


@functools.cache
def _unary_client_instrumentor() -> Any:
    """opentelemetry-instrumentation-grpc's aio client instrumentor, keeping only its
    unary-unary interceptor: with its streaming interceptors a client's `call.cancel()` never
    reaches the server (an upload whose client went away kept running; found by
    tests/integration/ingest/test_streaming_put.py). Service-to-service calls (Predict,
    GetModelStatus, JWKS) are unary; streaming client calls are not traced. One class, made
    once: instrumentors are singletons per class, which keeps `instrument()` idempotent."""
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
    from opentelemetry.instrumentation.grpc._aio_client import (
        StreamStreamAioClientInterceptor,
        StreamUnaryAioClientInterceptor,
        UnaryStreamAioClientInterceptor,
    )

    streaming = (
        UnaryStreamAioClientInterceptor,
        StreamUnaryAioClientInterceptor,
        StreamStreamAioClientInterceptor,
    )

    class UnaryAioClientInstrumentor(GrpcAioInstrumentorClient):  # type: ignore[misc]
        def _add_interceptors(self, tracer_provider: Any, kwargs: dict[str, Any]) -> Any:
            kwargs = super()._add_interceptors(tracer_provider, kwargs)
            kwargs["interceptors"] = [
                i for i in kwargs["interceptors"] if not isinstance(i, streaming)
            ]
            return kwargs

    return UnaryAioClientInstrumentor()


def instrument_libraries() -> None:
    """Spans for gRPC (server, and the aio client's unary calls), PostgreSQL (psycopg) and
    Redis calls.

    Idempotent. Call it before the gRPC server, channels and pools are created: the gRPC
    instrumentors patch the constructors, psycopg's patches `connect`.
    """
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentors: list[Any] = [
        GrpcAioInstrumentorServer(),
        _unary_client_instrumentor(),
        PsycopgInstrumentor(),
        RedisInstrumentor(),
    ]
    for instrumentor in instrumentors:
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


# --- JetStream: joining the producer's trace ---------------------------------------------------


def message_context(headers: Mapping[str, str] | None) -> Context:
    """The producer's trace context carried in a message's headers (W3C `traceparent`)."""
    return propagate.extract(dict(headers or {}))


def producer_links(headers: Iterable[Mapping[str, str] | None]) -> list[Link]:
    """A link to each message's producer span (those that carry one), for a batch span."""
    links = []
    for carried in headers:
        span_context = trace.get_current_span(message_context(carried)).get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context))
    return links


def trace_headers(span: Span) -> dict[str, str]:
    """W3C headers (`traceparent`, `tracestate`) that make `span` the parent of what a
    consumer of the message does (outbox rows written on a job's behalf)."""
    carried: dict[str, str] = {}
    propagate.inject(carried, context=trace.set_span_in_context(span))
    return carried


# --- Prometheus -------------------------------------------------------------------------------


@dataclass
class MetricsEndpoint:
    """A running Prometheus exposition server; `address` is where it really listens."""

    address: str
    _server: Any

    def close(self) -> None:
        """Stop serving `/metrics`."""
        self._server.shutdown()
        self._server.server_close()


def start_metrics_endpoint(addr: str) -> MetricsEndpoint | None:
    """Serve the default Prometheus registry on `addr` (`host:port`, port 0 = free port)."""
    if not addr:
        return None
    host, _, port = addr.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1")
    bound_host, bound_port = str(server.server_address[0]), server.server_address[1]
    return MetricsEndpoint(address=f"{bound_host}:{bound_port}", _server=server)
