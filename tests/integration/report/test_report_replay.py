"""Replaying svc_report's dead letters does the work again: a replayed report job rebuilds a
FAILED report, a replayed delivery job re-sends a FAILED delivery (same idempotency key).
The replay is published the way ReplayDeadLetter publishes it
(medmesh.settle.republish_dead_letter); before the fix both were acked without any work."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from report_harness import CLINIC, ReportHarness
from report_mis import MisReceiver
from test_report_delivery import ready_report, set_target

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.events.v1 import DeadLetterEnvelope
from gen.medmesh.report.v1 import DeliveryStatus, ReportStatus
from medmesh.settle import republish_dead_letter


async def replay(reports: ReportHarness, subject: str) -> DeadLetterEnvelope:
    """Replay the one dead letter of `subject`; returns it."""
    [letter] = await reports.messages(reports.topology.dlq_subject(subject), DeadLetterEnvelope)
    await republish_dead_letter(
        reports.js, str(uuid.uuid4()), letter.original_subject, letter.payload, letter.headers
    )
    return letter


async def failed_report_then_fixed(reports: ReportHarness, _mis: MisReceiver) -> str:
    """A report that failed every attempt (a result not visible yet), then the result appears;
    returns the report id."""
    study = await reports.seed_study()
    late_file, late_result = str(uuid.uuid4()), str(uuid.uuid4())
    study.result_ids.append(late_result)
    await reports.announce(study)
    row = await reports.wait_for_report(study.study_id, status=ReportStatus.FAILED)
    await reports.add_file(
        study.study_id, late_file, FileKind.TEXT_NOTE, "late-note.txt", "text/plain", CLINIC, 2
    )
    await reports.insert_result(
        reports.note_result(late_result, study.study_id, late_file, CLINIC)
    )
    await replay(reports, reports.topology.report_subject)
    return str(row["report_id"])


async def failed_delivery_then_fixed(reports: ReportHarness, mis: MisReceiver) -> str:
    """A delivery the MIS refused (400, dead-lettered at once), then the MIS accepts."""
    mis.state.statuses = [400]
    await set_target(reports, mis)
    row = await ready_report(reports)
    report_id = str(row["report_id"])
    await reports.wait_for_delivery(report_id, int(DeliveryStatus.FAILED))
    mis.state.statuses = []
    await replay(reports, reports.topology.deliver_subject)
    return report_id


@pytest.mark.parametrize(
    ("make_failure", "status_column", "status"),
    [
        pytest.param(
            failed_report_then_fixed, "status", int(ReportStatus.READY), id="report-job"
        ),
        pytest.param(
            failed_delivery_then_fixed,
            "delivery_status",
            int(DeliveryStatus.DELIVERED),
            id="delivery-job",
        ),
    ],
)
async def test_a_replayed_report_or_delivery_job_is_worked_on_again(
    reports: ReportHarness, mis: MisReceiver, make_failure: Any, status_column: str, status: int
) -> None:
    report_id = await make_failure(reports, mis)

    rows = await reports.wait_for_rows(
        f"SELECT * FROM report.reports WHERE report_id = %s AND {status_column} = %s",
        (report_id, status),
    )
    assert rows[0]["failure_reason"] == ""


async def test_a_replayed_delivery_reuses_its_idempotency_key(
    reports: ReportHarness, mis: MisReceiver
) -> None:
    report_id = await failed_delivery_then_fixed(reports, mis)
    await reports.wait_for_delivery(report_id, int(DeliveryStatus.DELIVERED))

    keys = [r.headers["Idempotency-Key"] for r in mis.state.requests]
    assert [r.status for r in mis.state.requests] == [400, 201]
    assert keys[0] == keys[1]
    deliveries = await reports.execute(
        "SELECT status, error FROM report.deliveries WHERE report_id = %s", (report_id,)
    )
    assert deliveries == [{"status": int(DeliveryStatus.DELIVERED), "error": ""}]
