"""Where a study is in its life, and the events that announce each change.

A study's status is derived from its files' statuses (plus the sticky REPORT_READY and FAILED),
so whichever path changes a file (an upload, the outbox relay putting its job on the queue, a
result or failure from svc_infer) calls one function, `StudyEvents.record_change`, inside its
own transaction: the new status and the `StudyStatusChanged` event commit together through
the outbox. WatchStudy streams are fed from those events. (`StudyResultsReady`, which triggers
the report, is svc_infer's to publish: each InferenceJob carries `study_file_count`.)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from gen.medmesh.common.v1 import StudyStatus
from gen.medmesh.events.v1 import (
    InferenceFailed,
    InferenceJob,
    ReportReady,
    ResultReady,
    StudyStatusChanged,
)
from gen.medmesh.ingest.v1 import FileStatus
from medmesh.db import Connection
from medmesh.jetstream import Topology
from medmesh.outbox import Outbox, OutboxMessage
from svc_ingest import store

FINAL_STATUSES = frozenset({StudyStatus.REPORT_READY, StudyStatus.FAILED})
# Statuses that refuse new files (the contract: FAILED_PRECONDITION).
CLOSED_STATUSES = FINAL_STATUSES
# Statuses during which a study cannot be deleted: its jobs are in flight.
BUSY_STATUSES = frozenset({StudyStatus.QUEUED, StudyStatus.ANALYSING})


def now_utc() -> datetime:
    """The time stamped on rows and events (one clock for both, so watchers can compare)."""
    return datetime.now(UTC)


def derive_status(current: StudyStatus, files: Sequence[FileStatus]) -> StudyStatus:  # noqa: PLR0911 - a decision table
    """The study status its files imply; REPORT_READY and FAILED never change."""
    if current in FINAL_STATUSES:
        return current
    if not files:
        return StudyStatus.CREATED
    if FileStatus.FAILED in files:
        return StudyStatus.FAILED
    if all(f == FileStatus.ANALYSED for f in files):
        return StudyStatus.RESULT_READY
    if any(f in {FileStatus.ANALYSED, FileStatus.ANALYSING} for f in files):
        return StudyStatus.ANALYSING
    if FileStatus.QUEUED in files:
        return StudyStatus.QUEUED
    return StudyStatus.UPLOADED


@dataclass(frozen=True)
class StudyEvents:
    """Applies status changes and writes their events to the outbox."""

    outbox: Outbox
    topology: Topology

    @property
    def status_subject(self) -> str:
        """`<root>.events.study.status`: StudyStatusChanged, what WatchStudy listens to."""
        return self.topology.study_event_subject("status")

    async def record_change(
        self,
        conn: Connection,
        study: store.Row,
        now: datetime,
        *,
        file_id: str = "",
        reason: str = "",
        status: StudyStatus | None = None,
    ) -> StudyStatus:
        """Re-derive the (locked) study's status after a change and announce it.

        `status` forces a study-level status (REPORT_READY); otherwise it is derived from the
        files. One StudyStatusChanged is written per call, also when only a file changed.
        """
        previous = StudyStatus(study["status"])
        files = await store.file_statuses(conn, study["study_id"])
        if status is None or previous in FINAL_STATUSES:
            status = derive_status(previous, [FileStatus(f["status"]) for f in files])
        failure_reason = study["failure_reason"]
        if status == StudyStatus.FAILED and previous != StudyStatus.FAILED:
            failure_reason = reason
        await store.set_study_status(
            conn, study["study_id"], status=status, failure_reason=failure_reason, now=now
        )
        await self.outbox.enqueue(
            conn,
            self.status_subject,
            StudyStatusChanged(
                event_id=str(uuid.uuid4()),
                clinic_id=study["clinic_id"],
                study_id=str(study["study_id"]),
                status=status,
                previous_status=previous,
                file_id=file_id,
                reason=reason,
                event_time=now,
            ),
        )
        return status

    async def _file_change(
        self,
        conn: Connection,
        *,
        clinic_id: str,
        study_id: str,
        file_id: str,
        allowed_from: frozenset[FileStatus],
        reason: str,
        **changes: object,
    ) -> bool:
        """Move one file (checked against the event's clinic and study) and announce it."""
        try:
            study_uuid, file_uuid = uuid.UUID(study_id), uuid.UUID(file_id)
        except ValueError:
            return False
        study = await store.lock_study_by_id(conn, study_uuid)  # study first: uploads do too
        if study is None or study["clinic_id"] != clinic_id:
            return False
        file = await store.get_file_by_id(conn, file_uuid)
        if file is None or file["study_id"] != study_uuid:
            return False
        if FileStatus(file["status"]) not in allowed_from:
            return False  # already further along (events may arrive out of order)
        now = now_utc()
        await store.update_file(conn, file_uuid, now, **changes)
        await self.record_change(conn, study, now, file_id=file_id, reason=reason)
        return True

    async def on_jobs_published(self, conn: Connection, messages: Sequence[OutboxMessage]) -> None:
        """Relay hook: a published inference job moves its file from STORED to QUEUED.

        A batch spans studies. Their rows are all locked first, in one order (by id), before
        any file: a file lock is then never held while waiting for a study, which uploads
        lock first (the relay deadlocked with CreateTextNote under load when it went study,
        file, next study)."""
        job_subjects = {self.topology.infer_image_subject, self.topology.infer_text_subject}
        jobs = [
            InferenceJob.FromString(message.payload)
            for message in messages
            if self.topology.job_subject_of(message.subject) in job_subjects
        ]
        for study_uuid in sorted(_study_ids(jobs)):
            await store.lock_study_by_id(conn, study_uuid)
        for job in jobs:
            await self._file_change(
                conn,
                clinic_id=job.clinic_id,
                study_id=job.study_id,
                file_id=job.file_id,
                allowed_from=frozenset({FileStatus.STORED}),
                reason="inference job enqueued",
                status=int(FileStatus.QUEUED),
            )

    async def on_result_ready(self, conn: Connection, event: ResultReady) -> None:
        """svc_infer stored a result for a file."""
        await self._file_change(
            conn,
            clinic_id=event.clinic_id,
            study_id=event.study_id,
            file_id=event.file_id,
            allowed_from=frozenset({FileStatus.STORED, FileStatus.QUEUED, FileStatus.ANALYSING}),
            reason=f"result ready ({event.model_name} v{event.model_version})",
            status=int(FileStatus.ANALYSED),
            result_id=event.result_id,
        )

    async def on_inference_failed(self, conn: Connection, event: InferenceFailed) -> None:
        """svc_infer gave up on a file: the file and its study fail."""
        await self._file_change(
            conn,
            clinic_id=event.clinic_id,
            study_id=event.study_id,
            file_id=event.file_id,
            allowed_from=frozenset({FileStatus.STORED, FileStatus.QUEUED, FileStatus.ANALYSING}),
            reason=f"analysis failed after {event.attempts} attempts: {event.error}",
            status=int(FileStatus.FAILED),
            failure_reason=event.error,
        )

    async def on_report_ready(self, conn: Connection, event: ReportReady) -> None:
        """svc_report archived a report: the study is done."""
        try:
            study_uuid = uuid.UUID(event.study_id)
        except ValueError:
            return
        study = await store.lock_study_by_id(conn, study_uuid)
        if study is None or study["clinic_id"] != event.clinic_id:
            return
        if StudyStatus(study["status"]) in FINAL_STATUSES:
            return
        await self.record_change(
            conn,
            study,
            now_utc(),
            reason=f"report v{event.version} ready",
            status=StudyStatus.REPORT_READY,
        )


def _study_ids(jobs: Sequence[InferenceJob]) -> set[uuid.UUID]:
    """The well-formed study ids of `jobs` (a malformed one is skipped by `_file_change`)."""
    ids: set[uuid.UUID] = set()
    for job in jobs:
        try:
            ids.add(uuid.UUID(job.study_id))
        except ValueError:
            continue
    return ids
