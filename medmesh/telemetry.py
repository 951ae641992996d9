"""Telemetry set up once per process: structlog JSON logs carrying trace ids, OpenTelemetry
tracing exported over OTLP, and a Prometheus `/metrics` endpoint."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import start_http_server

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _add_trace_ids(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Stamp each log line with the current span's ids so logs and Jaeger traces join up."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event["trace_id"] = format(span_context.trace_id, "032x")
        event["span_id"] = format(span_context.span_id, "016x")
    return event


def configure_logging(service: str, level: str = "info") -> None:
    """JSON lines on stdout (Filebeat ships them): one object per event, with trace ids."""
    numeric = _LEVELS.get(level, logging.INFO)
    # Libraries that use stdlib logging (grpc, nats, yoyo) go through the same JSON renderer.
    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=numeric, force=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_trace_ids,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(service=service)


def configure_tracing(service: str, otlp_endpoint: str) -> TracerProvider:
    """Install the process's tracer provider; spans go to `otlp_endpoint` when one is set."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"medmesh-{service}"}))
    if otlp_endpoint:
        # Imported lazily: the exporter pulls in its own gRPC channel machinery.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True))
        )
    trace.set_tracer_provider(provider)
    return provider


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
    bound_host, bound_port = server.server_address[:2]
    return MetricsEndpoint(address=f"{bound_host}:{bound_port}", _server=server)
