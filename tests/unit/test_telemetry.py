"""medmesh.telemetry without I/O: stdlib log lines rendered as the same JSON as structlog's,
with the trace ids of their span; the root sampler; the query-time metrics fed from client
spans; the W3C helpers that let a job's consumer span join its producer's trace."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from medmesh import telemetry


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """configure_logging writing to a buffer; the global logging setup is restored after."""
    saved_structlog = structlog.get_config()
    saved_context = structlog.contextvars.get_contextvars()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer, saved_stdout = io.StringIO(), sys.stdout
    sys.stdout = buffer
    try:
        telemetry.configure_logging("infer", "info")
        yield buffer
    finally:
        sys.stdout = saved_stdout
        structlog.configure(**saved_structlog)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**saved_context)
        root.handlers[:], root.level = saved_handlers, saved_level


@pytest.fixture
def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    """medmesh's tracer provider exporting to memory (not installed globally)."""
    exporter = InMemorySpanExporter()
    tracer_provider = telemetry.new_tracer_provider("test")
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


def _lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line]


def test_a_stdlib_log_line_is_json_with_the_service_level_and_trace_ids_of_its_span(
    captured_logs: io.StringIO, provider: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tracer_provider, _ = provider
    with tracer_provider.get_tracer("test").start_as_current_span("job") as span:
        logging.getLogger("nats.aio.client").warning("reconnecting to %s", "nats://x")
        structlog.get_logger("svc_infer").info("consumer.started", consumer="infer-image")
    stdlib, native = _lines(captured_logs)
    ids = span.get_span_context()
    for line in (stdlib, native):
        assert line["service"] == "infer"
        assert line["trace_id"] == format(ids.trace_id, "032x")
        assert line["span_id"] == format(ids.span_id, "016x")
        assert str(line["timestamp"]).endswith("Z")
    assert stdlib["event"] == "reconnecting to nats://x"
    assert stdlib["level"] == "warning"
    assert stdlib["logger"] == "nats.aio.client"
    assert native["event"] == "consumer.started"


def test_a_stdlib_exception_is_rendered_into_the_json_line(captured_logs: io.StringIO) -> None:
    try:
        int("broken pipe")
    except ValueError:
        logging.getLogger("yoyo").exception("migration failed")
    [line] = _lines(captured_logs)
    assert line["event"] == "migration failed"
    assert "ValueError: invalid literal for int()" in str(line["exception"])


def test_stdlib_lines_below_the_configured_level_are_dropped(captured_logs: io.StringIO) -> None:
    logging.getLogger("grpc").debug("noise")
    assert _lines(captured_logs) == []


def _histogram_count(name: str, label: str, value: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_count", {label: value}) or 0.0


@pytest.mark.parametrize(
    ("kind", "exported"),
    [
        (trace.SpanKind.CLIENT, False),  # a query or Redis call of a background loop
        (trace.SpanKind.SERVER, True),  # a request
        (trace.SpanKind.CONSUMER, True),  # a job
        (trace.SpanKind.INTERNAL, True),
    ],
)
def test_root_spans_are_exported_unless_they_are_background_client_calls(
    provider: tuple[TracerProvider, InMemorySpanExporter],
    kind: trace.SpanKind,
    exported: bool,
) -> None:
    tracer_provider, exporter = provider
    with tracer_provider.get_tracer("test").start_as_current_span("root", kind=kind) as span:
        assert span.is_recording()
    assert bool(exporter.get_finished_spans()) is exported


def test_a_client_call_inside_a_request_is_exported_in_its_trace(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, exporter = provider
    tracer = tracer_provider.get_tracer("test")
    with (
        tracer.start_as_current_span("request", kind=trace.SpanKind.SERVER),
        tracer.start_as_current_span("SELECT", kind=trace.SpanKind.CLIENT),
    ):
        pass
    client, server = exporter.get_finished_spans()
    assert client.context.trace_id == server.context.trace_id
    assert client.parent is not None
    assert client.parent.span_id == server.context.span_id


@pytest.mark.parametrize(
    ("name", "attributes", "metric", "label", "value"),
    [
        ("INSERT", {"db.system": "postgresql"}, "medmesh_db_query_seconds", "operation", "INSERT"),
        ("medmesh", {"db.system": "postgresql"}, "medmesh_db_query_seconds", "operation", "OTHER"),
        ("MGET", {"db.system": "redis"}, "medmesh_redis_command_seconds", "command", "MGET"),
        (
            "SET EXPIRE",
            {"db.system": "redis", "db.redis.pipeline_length": 2},
            "medmesh_redis_command_seconds",
            "command",
            "PIPELINE",
        ),
    ],
)
def test_client_spans_feed_query_and_command_time_even_when_not_exported(
    provider: tuple[TracerProvider, InMemorySpanExporter],
    name: str,
    attributes: dict[str, object],
    metric: str,
    label: str,
    value: str,
) -> None:
    tracer_provider, exporter = provider
    before = _histogram_count(metric, label, value)
    # A background call: recorded only (the instrumentations set attributes after start).
    with tracer_provider.get_tracer("test").start_as_current_span(
        name, kind=trace.SpanKind.CLIENT
    ) as span:
        span.set_attributes(attributes)
    assert exporter.get_finished_spans() == ()
    assert _histogram_count(metric, label, value) == before + 1


def test_a_span_of_another_system_feeds_no_query_metric(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, _ = provider
    before = _histogram_count("medmesh_db_query_seconds", "operation", "OTHER")
    with tracer_provider.get_tracer("test").start_as_current_span("GET") as span:
        span.set_attribute("http.request.method", "GET")
    assert _histogram_count("medmesh_db_query_seconds", "operation", "OTHER") == before


def test_trace_headers_make_a_span_the_parent_and_producer_links_point_back_at_it(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, _ = provider
    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("upload", kind=trace.SpanKind.SERVER) as upload:
        headers = telemetry.trace_headers(upload)
    ids = upload.get_span_context()
    assert headers["traceparent"].startswith(f"00-{ids.trace_id:032x}-{ids.span_id:016x}-")
    child = tracer.start_span("process", context=telemetry.message_context(headers))
    assert child.get_span_context().trace_id == ids.trace_id
    child.end()
    [link] = telemetry.producer_links([headers, None, {"other": "header"}])
    assert link.context.span_id == ids.span_id
