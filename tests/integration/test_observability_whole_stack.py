"""What an operator sees of one study, on the product as `medmesh up` runs it: every span the
four services export over OTLP (to a real OTLP/gRPC receiver in the test) forms ONE trace from
UploadFile to the report-ready mail, and each service's /metrics shows the work with real
values (pool use, query time, queue depth and rates per consumer, inference time per model)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.otlp import ReceivedSpan, TraceCollector, otlp_receiver, render_tree
from support.stack import Stack, running_stack

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.ingest.v1 import UploadFileMetadata, UploadFileRequest
from medmesh.client import AsyncStub
from medmesh.contract import DescriptorImage

UPLOAD = "/medmesh.ingest.v1.IngestService/UploadFile"
NOTIFY = "notify report-ready"


@dataclass
class ObservedStack:
    """`medmesh up` exporting its spans to `collector`."""

    stack: Stack
    collector: TraceCollector


@dataclass
class FinishedStudy:
    """A study whose one image became a result, a report and a mail."""

    study: str
    study_id: str


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, model_base_dir: Path
) -> Iterator[ObservedStack]:
    """The whole product with MEDMESH_OTLP_ENDPOINT pointing at an in-test OTLP receiver
    (spans exported every 200 ms instead of every 5 s)."""
    with otlp_receiver() as (endpoint, collector), pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDMESH_OTLP_ENDPOINT", endpoint)
        patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
        with running_stack(tmp_path_factory.mktemp("observe"), model_base_dir) as stack:
            yield ObservedStack(stack, collector)


def _png() -> bytes:
    gradient = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    ok, encoded = cv2.imencode(".png", gradient)
    assert ok
    return encoded.tobytes()


async def _upload(stack: Stack, token: str, study: str, data: bytes) -> None:
    async def requests() -> AsyncIterator[UploadFileRequest]:
        yield UploadFileRequest(
            metadata=UploadFileMetadata(
                parent=study,
                kind=FileKind.IMAGE_PNG,
                file_name="chest.png",
                content_type="image/png",
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
        yield UploadFileRequest(chunk=data)

    async with grpc.aio.insecure_channel(stack.status["ingest"]) as channel:
        ingest = AsyncStub(channel, "medmesh.ingest.v1.IngestService", DescriptorImage())
        await ingest.upload_file(
            requests(), metadata=[("authorization", f"Bearer {token}")], timeout=60
        )


async def _wait_for_report_mail(stack: Stack, edge: httpx.AsyncClient, study: str) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        listed = await edge.get("/v1/reports", params={"study": study})
        assert listed.status_code == 200, listed.text
        reports = listed.json().get("reports", [])
        mailed = list((stack.data_dir / "mail").glob("*.eml"))
        if mailed and any(r["status"] == "REPORT_STATUS_READY" for r in reports):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"no ready report and mail for {study}")


@pytest.fixture(scope="module")
def finished(observed: ObservedStack) -> FinishedStudy:
    """One study, one PNG uploaded over gRPC, waited for until its report mail is sent."""
    stack = observed.stack
    password = (stack.data_dir / "secrets" / "admin-password").read_text().strip()

    async def run() -> FinishedStudy:
        async with httpx.AsyncClient(base_url=stack.status["edge"], timeout=30) as edge:
            login = await edge.post(
                "/v1/auth:login",
                json={"email": "admin@demo-clinic.example", "password": password},
            )
            assert login.status_code == 200, login.text
            token = login.json()["accessToken"]
            edge.headers["authorization"] = f"Bearer {token}"
            created = await edge.post("/v1/studies", json={"patientRef": "P-trace-1"})
            assert created.status_code == 200, created.text
            study = created.json()["study"]["name"]
            await _upload(stack, token, study, _png())
            await _wait_for_report_mail(stack, edge, study)
            return FinishedStudy(study, study.removeprefix("studies/"))

    return asyncio.run(run())


def _wait_for_span(collector: TraceCollector, name: str, study_id: str) -> ReceivedSpan:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for span in collector.spans:
            if span.name == name and span.attributes.get("medmesh.study_id") == study_id:
                return span
        time.sleep(0.2)
    raise AssertionError(f"no {name!r} span of {study_id} was exported")


def test_one_studys_spans_form_one_trace_from_upload_file_to_the_report_mail(
    observed: ObservedStack, finished: FinishedStudy
) -> None:
    collector = observed.collector
    notify = _wait_for_span(collector, NOTIFY, finished.study_id)
    time.sleep(1.0)  # the last batches of the other services' spans
    spans = collector.trace(notify.trace_id)
    by_name = {(s.service, s.name) for s in spans}

    # The request that uploaded the file is the trace's root.
    roots = [s for s in spans if not s.parent_id]
    assert [(r.service, r.name, r.kind) for r in roots] == [("medmesh-ingest", UPLOAD, "server")]
    # Every hop of the pipeline is in it: the outbox relay's publish, svc_infer's job, the
    # result events, svc_report's consumers and its mail. (Job subjects may end in a clinic's
    # lane token, hence prefixes.)
    hops = [
        ("medmesh-ingest", "send medmesh.jobs.infer.image"),
        ("medmesh-infer", "process medmesh.jobs.infer.image"),
        ("medmesh-infer", "send medmesh.events.study.results_ready"),
        ("medmesh-report", "process medmesh.events.study.results_ready"),
        ("medmesh-report", "send medmesh.jobs.report"),
        ("medmesh-report", "process medmesh.jobs.report"),
        ("medmesh-report", NOTIFY),
    ]
    missing = [
        hop for hop in hops if not any(s == hop[0] and n.startswith(hop[1]) for s, n in by_name)
    ]
    assert not missing, sorted(by_name)
    # PostgreSQL and Redis calls made for this study are in the same trace.
    clients = [s for s in spans if s.kind == "client"]
    systems = {s.attributes.get("db.system", s.attributes.get("db.system.name")) for s in clients}
    assert {"postgresql", "redis"} <= systems
    # Every span's parent is in the trace: nothing hangs off a span the trace lacks.
    ids = {s.span_id for s in spans}
    assert all(s.parent_id in ids for s in spans if s.parent_id)

    # svc_infer's micro-batch is its own span, linked to the job's producer span; the
    # Predict call to the model server (an instrumented gRPC client call) is under it.
    job = next(s for s in spans if s.name.startswith("process medmesh.jobs.infer.image"))
    batch = next(
        s
        for s in collector.spans
        if s.name.endswith(" batch") and (job.trace_id, job.parent_id) in s.links
    )
    batch_trace = collector.trace(batch.trace_id)
    assert any(
        s.kind == "client" and s.name.endswith("/Predict") and s.parent_id == batch.span_id
        for s in batch_trace
    )

    # The README's span tree is this file (pytest's basetemp, observe*/trace-tree.txt).
    (observed.stack.data_dir.parent / "trace-tree-compact.txt").write_text(
        f"trace {notify.trace_id}\n"
        f"{render_tree(spans, attributes=('medmesh.study_id',), compact=True)}\n\n"
        f"linked batch trace {batch.trace_id}\n{render_tree(batch_trace, compact=True)}\n"
    )
    (observed.stack.data_dir.parent / "trace-tree.txt").write_text(
        f"trace {notify.trace_id}\n{render_tree(spans, attributes=('medmesh.study_id',))}\n\n"
        f"linked batch trace {batch.trace_id}\n{render_tree(batch_trace)}\n"
    )


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _metrics_url(stack: Stack, service: str) -> str:
    return next(x for x in stack.printed if x.startswith(f"{service} metrics ")).split()[-1]


def test_metrics_show_pool_use_query_time_queues_and_inference_time_after_real_work(
    observed: ObservedStack, finished: FinishedStudy
) -> None:
    stack = observed.stack
    infer = _scrape(_metrics_url(stack, "infer"))
    # Inference time per model and version: the one Predict of the study.
    predicts = {
        (labels["model"], labels["version"]): value
        for labels, value in infer["medmesh_infer_inference_seconds_count"]
    }
    assert predicts.get(("resnet50", "1"), 0) + predicts.get(("resnet50", "2"), 0) >= 1
    # Pool use: connections lent (and given back) by svc_infer's write pool.
    requests = {labels["pool"]: v for labels, v in infer["medmesh_db_pool_requests_total"]}
    assert requests["medmesh-infer-write"] > 0
    assert [v for labels, v in infer["medmesh_db_pool_max"] if labels["pool"].endswith("write")]
    # Query time by statement verb, from the psycopg spans.
    queries = {labels["operation"]: v for labels, v in infer["medmesh_db_query_seconds_count"]}
    assert queries.get("INSERT", 0) > 0
    assert queries.get("SELECT", 0) > 0

    # Queue depth and message rates per stream and consumer (JetStream's own counters, polled
    # every 10 s): the image consumer (its clinic lane's durable) was handed the job and acked
    # it; nothing is pending.
    deadline = time.monotonic() + 30
    while True:
        infer = _scrape(_metrics_url(stack, "infer"))
        delivered = sum(
            v
            for labels, v in infer.get("medmesh_jetstream_consumer_delivered_total", [])
            if labels["group"] == "infer-image"
        )
        if delivered >= 1 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert delivered >= 1
    image = [
        (labels, v)
        for labels, v in infer["medmesh_jetstream_consumer_pending"]
        if labels["group"] == "infer-image"
    ]
    assert image
    assert all(v == 0 for _, v in image)
    published = {
        labels["stream"]: v for labels, v in infer["medmesh_jetstream_stream_published_total"]
    }
    assert any(stream.endswith("_JOBS") and v >= 1 for stream, v in published.items())

    report = _scrape(_metrics_url(stack, "report"))
    acked = report["medmesh_jetstream_consumer_acked_total"]
    consumers = {labels["group"] for labels, _ in acked}
    assert {"report", "report-results-ready"} <= consumers
