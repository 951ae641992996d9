"""Storing results: rows, audit records and events in ONE transaction, then the cache.

For each new result the transaction also writes a `ResultReady` outbox row and an audit
event (which model version produced which result); it takes the row locks of the batch's
studies, and for each study whose every known file now has a result it writes
`StudyResultsReady`. Statements are batched (a fixed number of round trips per batch): on a
shared machine every round trip is CPU taken from the model server.
The outbox relay publishes after the commit, so an event is never announced for a result
that was rolled back, and never lost for one that was committed. The job is acked only after
this commit returns.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from gen.medmesh.events.v1 import (
    InferenceFailed,
    InferenceJob,
    ResultReady,
    StudyResultsReady,
)
from medmesh.audit import Actor, record_audit_events
from medmesh.db import Connection, Database
from medmesh.jetstream import Topology
from medmesh.outbox import Outbox, OutboxEntry
from svc_infer import metrics, store
from svc_infer.cache import ResultCache
from svc_infer.convert import result_name, result_to_proto
from svc_infer.results import ResultDraft, StoredResult, StudyProgress

WORKER_ACTOR = Actor("svc_infer", ("service",))
RESULTS_READY_STATUS = "results_ready"


class ResultWriter:
    """Commits result drafts with their events; caches what was stored."""

    def __init__(
        self, database: Database, outbox: Outbox, topology: Topology, cache: ResultCache
    ) -> None:
        self._database = database
        self._outbox = outbox
        self._topology = topology
        self._cache = cache

    async def commit(
        self,
        drafts: Sequence[ResultDraft],
        *,
        trace_headers: Mapping[str, dict[str, str]] | None = None,
    ) -> list[StoredResult]:
        """Store the drafts (a draft whose file + version has a result already is skipped),
        announce results and completed studies, then cache. Returns the new results.

        `trace_headers` by job id: each event is written in the trace of the job it announces
        (a study's in that of its last job here), not in the batch's.

        A fixed number of round trips per batch, whatever its size: one INSERT for the
        results, two statements to lock and read the batch's studies, then the events,
        audit rows and study updates sent together in pipeline mode (nothing is read back).
        """
        if not drafts:
            return []
        ordered = sorted(drafts, key=lambda d: (d.study_id, d.file_id))
        async with self._database.transaction() as conn:
            stored = await store.insert_results(conn, ordered)
            progress = await store.lock_studies(conn, {d.study_id for d in ordered})
            complete = {
                study_id: p for study_id, p in sorted(progress.items()) if p.newly_complete()
            }
            carried = trace_headers or {}
            events = [self._result_event(row, carried.get(row.draft.job_id)) for row in stored]
            events += [
                self._study_event(study_id, study, ordered, carried)
                for study_id, study in complete.items()
            ]
            async with conn.pipeline():
                await self._outbox.enqueue_many(conn, events)
                await record_audit_events(
                    conn, WORKER_ACTOR, "result.store", [_audit_of(row) for row in stored]
                )
                await store.mark_studies_announced(
                    conn, {study_id: len(p.result_ids) for study_id, p in complete.items()}
                )
        for row in stored:
            d = row.draft
            labels = (d.model_name, str(d.model_version), d.arm.name.lower())
            metrics.RESULTS.labels(*labels).inc()
            metrics.JOB_SECONDS.labels(*labels).observe(d.timings.total_ms / 1000.0)
        await self._cache.put_results([result_to_proto(r) for r in stored])
        return stored

    def _result_event(self, row: StoredResult, headers: dict[str, str] | None) -> OutboxEntry:
        draft = row.draft
        event_id = uuid.uuid4()
        event = ResultReady(
            event_id=str(event_id),
            job_id=draft.job_id,
            clinic_id=draft.clinic_id,
            study_id=draft.study_id,
            file_id=draft.file_id,
            result_id=row.result_id,
            kind=draft.kind,
            model_name=f"models/{draft.model_name}",
            model_version=draft.model_version,
            event_time=row.create_time,
        )
        return (self._topology.result_ready_subject, event, event_id, headers)

    def _study_event(
        self,
        study_id: str,
        progress: StudyProgress,
        drafts: Sequence[ResultDraft],
        trace_headers: Mapping[str, dict[str, str]],
    ) -> OutboxEntry:
        clinic_id = next(d.clinic_id for d in drafts if d.study_id == study_id)
        headers = next(
            (
                trace_headers[d.job_id]
                for d in reversed(drafts)
                if d.study_id == study_id and d.job_id in trace_headers
            ),
            None,
        )
        event_id = uuid.uuid4()
        event = StudyResultsReady(
            event_id=str(event_id),
            clinic_id=clinic_id,
            study_id=study_id,
            result_ids=list(progress.result_ids),
            event_time=datetime.now(UTC),
        )
        return (
            self._topology.study_event_subject(RESULTS_READY_STATUS),
            event,
            event_id,
            headers,
        )


def _audit_of(row: StoredResult) -> tuple[str, str, str, dict[str, object]]:
    """The audit event of a stored result: which model version produced it."""
    draft = row.draft
    return (
        draft.clinic_id,
        result_name(draft.study_id, row.result_id),
        draft.study_id,
        {
            "file_id": draft.file_id,
            "job_id": draft.job_id,
            "model": draft.model_name,
            "model_version": draft.model_version,
            "arm": draft.arm.name.lower(),
            "preprocessing_version": draft.preprocessing_version,
        },
    )


async def announce_failure(
    conn: Connection,
    outbox: Outbox,
    topology: Topology,
    job: InferenceJob,
    error: str,
    attempts: int,
    failed_at: datetime,
) -> None:
    """Write `InferenceFailed` for a job that was dead-lettered (in the caller's transaction)."""
    event_id = uuid.uuid4()
    event = InferenceFailed(
        event_id=str(event_id),
        job_id=job.job_id,
        clinic_id=job.clinic_id,
        study_id=job.study_id,
        file_id=job.file_id,
        error=error,
        attempts=attempts,
        event_time=failed_at,
    )
    await outbox.enqueue(conn, topology.result_failed_subject, event, msg_id=event_id)
