"""Two replicas of svc_infer and two of svc_report on one PostgreSQL, NATS and Redis: the work
is shared (each replica stores results or builds reports), nothing is produced twice, and
killing one replica of each (kill -9, mid-run) loses nothing.

The flow is the product's: note jobs → results (svc_infer) → StudyResultsReady (outbox) →
one PENDING report + ReportJob (svc_report's results-ready consumer) → the READY report.
100 studies (MEDMESH_FAULT_SMALL=1: 30)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fault_stack import (
    FaultStack,
    ServiceProcess,
    enqueue_notes,
    full_run,
    infer_env,
    wait_for_count,
)
from support.jetstream import published

from gen.medmesh.events.v1 import DeadLetterEnvelope, ReportJob, ReportReady
from gen.medmesh.report.v1 import ReportStatus
from medmesh.migrate import migrate_all
from medmesh.objects import ObjectStore

RESULTS_SQL = "SELECT count(*) FROM infer.results"
READY_SQL = f"SELECT count(*) FROM report.reports WHERE status = {int(ReportStatus.READY)}"


def reports_logged(process: ServiceProcess) -> int:
    """How many reports this replica logged as ready (its log so far)."""
    count = 0
    for line in process.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and json.loads(line).get("event") == "report.ready":
            count += 1
    return count


async def test_two_replicas_share_the_work_and_killing_one_of_each_loses_nothing(
    fault_stack: FaultStack,
    fault_js: Any,
    fault_objects: ObjectStore,
    model_server_address: str,
) -> None:
    total = 100 if full_run() else 30
    began = time.monotonic()
    # Every schema first: svc_report reads svc_ingest's and svc_infer's read-model views.
    await asyncio.to_thread(migrate_all, fault_stack.base_env)
    infer_vars = {**infer_env(fault_stack, model_server_address), "MEDMESH_INFER_BATCH_SIZE": "4"}
    infer_a, infer_b = (
        fault_stack.service("infer", f"infer-{n}", MEDMESH_METRICS_ADDR="127.0.0.1:0", **infer_vars)
        for n in "ab"
    )
    report_vars = {
        "MEDMESH_LOG_LEVEL": "info",
        "MEDMESH_JOB_ACK_WAIT_S": "2",
        "MEDMESH_REPORT_RETRY_BACKOFF_S": "0.5,1",
    }
    report_a, report_b = (fault_stack.service("report", f"report-{n}", **report_vars) for n in "ab")
    starts = await asyncio.gather(*(p.start() for p in (infer_a, infer_b, report_a, report_b)))
    jobs = await enqueue_notes(fault_stack, fault_js, fault_objects, total, with_studies=True)

    await wait_for_count(fault_stack, RESULTS_SQL, total // 3, [infer_a, infer_b])
    infer_a_results = await infer_a.metric("medmesh_infer_results_total")
    await infer_a.kill9()
    await wait_for_count(fault_stack, READY_SQL, total // 3, [infer_b, report_a, report_b])
    report_a_ready = reports_logged(report_a)
    await report_a.kill9()

    await wait_for_count(fault_stack, RESULTS_SQL, total, [infer_b])
    await wait_for_count(fault_stack, READY_SQL, total, [report_b])
    await asyncio.sleep(3)  # past the ack wait: a late duplicate would show by now
    infer_b_results = await infer_b.metric("medmesh_infer_results_total")
    report_b_ready = reports_logged(report_b)
    elapsed = time.monotonic() - began

    results = await fault_stack.query(
        "SELECT file_id, count(*) AS n FROM infer.results GROUP BY file_id"
    )
    assert {r["file_id"]: r["n"] for r in results} == {job.file_id: 1 for job in jobs}
    reports = await fault_stack.query(
        "SELECT study_id::text AS study_id, count(*) AS n, max(version) AS version,"
        " min(status) AS status FROM report.reports GROUP BY study_id"
    )
    assert {r["study_id"]: (r["n"], r["version"], r["status"]) for r in reports} == {
        job.study_id: (1, 1, int(ReportStatus.READY)) for job in jobs
    }
    ready = await published(
        fault_js, fault_stack.topology.report_ready_subject, ReportReady, count=total
    )
    assert sorted(e.study_id for e in ready) == sorted(job.study_id for job in jobs)
    report_jobs = await published(  # on the clinics' lanes (fair scheduling)
        fault_js, f"{fault_stack.topology.report_subject}.*", ReportJob, count=total
    )
    assert len(report_jobs) == total  # one ReportJob per study: no second report requested
    for subject in (fault_stack.topology.infer_text_subject, fault_stack.topology.report_subject):
        dlq = fault_stack.topology.dlq_subject(subject)
        assert await published(fault_js, dlq, DeadLetterEnvelope, count=0, timeout_s=1) == []

    # The work was shared: each replica did some of it before one of them was killed.
    assert infer_a_results > 0
    assert infer_b_results > 0
    assert report_a_ready > 0
    assert report_b_ready > 0
    print(  # noqa: T201 - the measured numbers, for the README (pytest -s)
        f"\nfault replicas: {total} studies; results by infer a/b {infer_a_results:.0f}/"
        f"{infer_b_results:.0f}, reports by report a/b {report_a_ready}/{report_b_ready}; "
        f"starts {[round(s, 1) for s in starts]} s, total {elapsed:.1f} s"
    )
