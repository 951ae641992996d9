"""Asking for a report: from StudyResultsReady (svc_infer's event) or GenerateReport.

Either way, one transaction writes the PENDING report row and its ReportJob (outbox), so a
report is never requested without a job nor a job sent for a report that was rolled back.
Idempotent per study + result set: the same set returns the report that exists (PENDING or
READY), a FAILED one is put back to PENDING and tried again, a new set makes a new version.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.msg import Msg

from gen.medmesh.events.v1 import ReportJob, StudyResultsReady
from medmesh.audit import AuditActor, record_audit_event
from medmesh.db import Connection, Database
from medmesh.errors import FailedPrecondition, NotFound
from medmesh.jetstream import Topology
from medmesh.outbox import Outbox
from svc_report import read_store, store
from svc_report.consumers import Attempt, Done, GiveUp, Outcome
from svc_report.model import ReportRecord, result_set_digest


@dataclass(frozen=True)
class Requested:
    """The report that answers a request, and whether this request created (or re-queued) it."""

    report: ReportRecord
    enqueued: bool


class ReportRequests:
    """Writes pending reports and their jobs."""

    def __init__(self, database: Database, outbox: Outbox, topology: Topology) -> None:
        self._database = database
        self._outbox = outbox
        self._topology = topology

    async def request_in(
        self,
        conn: Connection,
        *,
        clinic_id: str,
        study_id: str,
        result_ids: list[str],
        requested_by: str,
    ) -> Requested:
        """In the caller's transaction: the report of this result set, created if needed."""
        result_set = result_set_digest(result_ids)
        await store.lock_study_reports(conn, study_id)
        existing = await store.live_report_for_set(conn, clinic_id, study_id, result_set)
        if existing is not None:
            return Requested(existing, enqueued=False)
        failed_id = await store.failed_report_for_set(conn, clinic_id, study_id, result_set)
        if failed_id is not None:
            report = await store.retry_failed_report(conn, failed_id, requested_by)
        else:
            report = await store.insert_pending_report(
                conn,
                clinic_id=clinic_id,
                study_id=study_id,
                result_ids=sorted(set(result_ids)),
                result_set=result_set,
                requested_by=requested_by,
            )
        job_id = uuid.uuid4()
        job = ReportJob(
            job_id=str(job_id),
            clinic_id=clinic_id,
            study_id=study_id,
            report_id=report.report_id,
            result_ids=list(report.result_ids),
            requested_by=requested_by,
            enqueue_time=datetime.now(UTC),
        )
        subject = self._topology.publish_subject(self._topology.report_subject, clinic_id)
        await self._outbox.enqueue(conn, subject, job, msg_id=job_id)  # the clinic's lane
        return Requested(report, enqueued=True)

    async def generate(self, clinic_id: str, study_id: str, actor: AuditActor) -> Requested:
        """GenerateReport: a report of the study's current results (newest per file).

        NOT_FOUND when the clinic sees no such study or it has no results; FAILED_PRECONDITION
        while a file that will get a result has none yet.
        """
        async with self._database.read_connection() as conn:
            study = await read_store.get_study(conn, clinic_id, study_id)
            if study is None:
                raise NotFound(f"studies/{study_id} not found")
            files = await read_store.study_files(conn, clinic_id, study_id)
            result_ids = await read_store.latest_result_ids(conn, clinic_id, study_id)
            with_results = set()
            if result_ids:
                rows = await read_store.results_by_id(conn, clinic_id, result_ids)
                with_results = {r.file_id for r in rows}
        if not result_ids:
            raise NotFound(f"studies/{study_id} has no results")
        waiting = [
            f.file_id
            for f in files
            if f.status in read_store.FILE_STATUSES_IN_ANALYSIS and f.file_id not in with_results
        ]
        if waiting:
            raise FailedPrecondition(
                f"{len(waiting)} file(s) of studies/{study_id} are still being analysed"
            )
        async with self._database.transaction() as conn:
            requested = await self.request_in(
                conn,
                clinic_id=clinic_id,
                study_id=study_id,
                result_ids=result_ids,
                requested_by=f"users/{actor.user_id}",
            )
            await record_audit_event(
                conn,
                clinic_id=clinic_id,
                actor=actor,
                action="report.generate",
                resource=f"reports/{requested.report.report_id}",
                study_id=study_id,
                detail={
                    "version": requested.report.version,
                    "result_ids": list(requested.report.result_ids),
                    "enqueued": requested.enqueued,
                },
            )
        return requested

    async def on_results_ready(self, msg: Msg, _attempt: Attempt) -> tuple[Outcome, str]:
        """The `report-results-ready` consumer's handler: one pending report per event."""
        try:
            event = StudyResultsReady.FromString(msg.data)
        except Exception as exc:  # noqa: BLE001 - not an event at all: no retry can help
            return GiveUp(f"undecodable StudyResultsReady: {exc}"), ""
        if not (event.clinic_id and event.study_id and event.result_ids):
            return GiveUp("StudyResultsReady needs clinic_id, study_id and result_ids"), ""
        async with self._database.transaction() as conn:
            if await store.mark_event_processed(conn, event.event_id or msg.reply):
                await self.request_in(
                    conn,
                    clinic_id=event.clinic_id,
                    study_id=event.study_id,
                    result_ids=list(event.result_ids),
                    requested_by="",
                )
        return Done(), event.clinic_id
