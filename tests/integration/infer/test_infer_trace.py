"""svc_infer keeps each job in the trace of the request that enqueued it, although it works
in micro-batches: the ResultReady event of a job, and the dead letter and InferenceFailed of a
job that failed for good, carry a `traceparent` of that request's trace (the batch itself is
a separate, linked trace)."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from support.infer import CLINIC, InferHarness, png_bytes

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.events.v1 import InferenceFailed
from medmesh.telemetry import new_tracer_provider

NOT_AN_IMAGE = b"\x89PNG\r\n\x1a\n but the rest is not a PNG at all"


@pytest.fixture(scope="module")
def tracer() -> trace.Tracer:
    """A real (SDK) tracer provider for the process, as `medmesh.runtime` installs one: the
    service's spans, running in this process, become real spans."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(new_tracer_provider("test"))
    return trace.get_tracer("test")


def _trace_id(headers: dict[str, str] | None) -> str:
    assert headers is not None
    return headers["traceparent"].split("-")[1]


async def test_result_events_dead_letters_and_failures_stay_in_the_enqueuing_requests_trace(
    infer: InferHarness, tracer: trace.Tracer
) -> None:
    with tracer.start_as_current_span("upload", kind=trace.SpanKind.SERVER) as upload:
        good = await infer.publish_job(png_bytes(3), FileKind.IMAGE_PNG)
        await infer.publish_job(NOT_AN_IMAGE, FileKind.IMAGE_PNG, sha256="")
    expected = format(upload.get_span_context().trace_id, "032x")

    await infer.wait_for_result(good.file_id)
    await infer.wait_for_rows(
        "SELECT 1 FROM infer.dead_letters WHERE clinic_id = %s", (CLINIC,), timeout_s=120
    )
    topology = infer.topology
    ready = await infer.js.get_last_msg(topology.events_stream, topology.result_ready_subject)
    assert _trace_id(ready.headers) == expected
    dead = await infer.js.get_last_msg(
        topology.dlq_stream, topology.dlq_subject(topology.infer_image_subject)
    )
    assert _trace_id(dead.headers) == expected
    [failed] = await infer.messages(topology.result_failed_subject, InferenceFailed)
    announced = await infer.js.get_last_msg(topology.events_stream, topology.result_failed_subject)
    assert InferenceFailed.FromString(announced.data).job_id == failed.job_id
    assert _trace_id(announced.headers) == expected
