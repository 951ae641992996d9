"""A real OTLP/gRPC trace receiver for the tests: opentelemetry-proto's TraceService on a free
port, keeping every span it is sent, and a text rendering of a trace as a tree."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1 import trace_pb2

_KINDS = {
    trace_pb2.Span.SPAN_KIND_SERVER: "server",
    trace_pb2.Span.SPAN_KIND_CLIENT: "client",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "producer",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "consumer",
    trace_pb2.Span.SPAN_KIND_INTERNAL: "internal",
}


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector received it (ids in hex)."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, object] = field(hash=False)
    links: tuple[tuple[str, str], ...] = ()
    """(trace_id, span_id) of each linked span."""


class TraceCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported span; thread-safe."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name", "")),
                            name=span.name,
                            kind=_KINDS.get(span.kind, "unspecified"),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            links=tuple((k.trace_id.hex(), k.span_id.hex()) for k in span.links),
                        )
                    )
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self._lock:
            return list(self._spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """The spans of one trace, in start order."""
        return sorted((s for s in self.spans if s.trace_id == trace_id), key=lambda s: s.start_ns)


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, TraceCollector]]:
    """An OTLP/gRPC endpoint (`http://127.0.0.1:<port>`) and the collector behind it."""
    collector = TraceCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", collector
    finally:
        server.stop(grace=None)


def render_tree(
    spans: list[ReceivedSpan], *, attributes: tuple[str, ...] = (), compact: bool = False
) -> str:
    """The spans as an indented tree (children under parents, in start order): service, kind,
    name, duration, the chosen attributes, and links to spans outside the tree. `compact`
    folds the leaf client spans (PostgreSQL, Redis) under each span into one counted line."""
    by_id = {s.span_id: s for s in spans}
    children: dict[str, list[ReceivedSpan]] = {}
    roots = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        if span.parent_id and span.parent_id in by_id:
            children.setdefault(span.parent_id, []).append(span)
        else:
            roots.append(span)
    lines: list[str] = []

    def folded(span: ReceivedSpan) -> bool:
        system = span.attributes.get("db.system", span.attributes.get("db.system.name"))
        return compact and span.kind == "client" and bool(system) and span.span_id not in children

    def walk(span: ReceivedSpan, depth: int) -> None:
        ms = (span.end_ns - span.start_ns) / 1e6
        shown = " ".join(f"{k}={span.attributes[k]}" for k in attributes if k in span.attributes)
        linked = f" [links: {len(span.links)}]" if span.links else ""
        service = span.service.removeprefix("medmesh-")
        lines.append(
            f"{'  ' * depth}{service:<7} {span.kind:<8} {span.name}  {ms:.1f} ms"
            f"{'  ' + shown if shown else ''}{linked}"
        )
        calls: dict[str, int] = {}
        for child in children.get(span.span_id, []):
            if folded(child):
                system = child.attributes.get("db.system", child.attributes.get("db.system.name"))
                key = f"{system} {child.name.split(' ', 1)[0]}"
                calls[key] = calls.get(key, 0) + 1
        if calls:
            summary = ", ".join(f"{name} x{n}" for name, n in sorted(calls.items()))
            lines.append(f"{'  ' * (depth + 1)}{service:<7} client   {summary}")
        for child in children.get(span.span_id, []):
            if not folded(child):
                walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return "\n".join(lines)
