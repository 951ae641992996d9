"""Replayed dead letters of svc_report's jobs: reopen what the failure closed.

A report job that failed its last attempt left its report FAILED, a delivery job its
delivery FAILED; a replayed job (medmesh.settle.REPLAY_HEADER, published by
ReplayDeadLetter) would otherwise find nothing PENDING and be acked without any work. These
hooks run before the job's handler (svc_report.consumers.ConsumerLoop `on_replay`); they are
idempotent, so a redelivered replay changes nothing twice. A `StudyResultsReady` replay needs
no hook: an event whose handling failed was never recorded as processed.
"""

from __future__ import annotations

import structlog
from nats.aio.msg import Msg

from gen.medmesh.events.v1 import DeliveryJob, ReportJob
from medmesh.db import Database
from medmesh.settle import REPLAY_HEADER
from svc_report import delivery_store, store

log = structlog.get_logger(__name__)


class ReplayReopener:
    """The `on_replay` hooks of the report and deliver consumers."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def report(self, msg: Msg) -> None:
        """A FAILED report goes back to PENDING, so the replayed ReportJob builds it."""
        job = ReportJob.FromString(msg.data)
        async with self._database.transaction() as conn:
            reopened = await store.reopen_failed_report(conn, job.clinic_id, job.report_id)
        log.info(
            "replay.report",
            report=job.report_id,
            reopened=reopened,
            dead_letter=(msg.headers or {}).get(REPLAY_HEADER, ""),
        )

    async def delivery(self, msg: Msg) -> None:
        """A FAILED delivery goes back to PENDING (same idempotency key, so a MIS that did
        store it does not store it twice), unless a later delivery superseded it."""
        job = DeliveryJob.FromString(msg.data)
        async with self._database.transaction() as conn:
            reopened = await delivery_store.reopen_failed_delivery(
                conn, job.clinic_id, job.idempotency_key
            )
        log.info(
            "replay.delivery",
            report=job.report_id,
            reopened=reopened,
            dead_letter=(msg.headers or {}).get(REPLAY_HEADER, ""),
        )
