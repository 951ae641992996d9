"""Delivering READY reports to the clinic's MIS as FHIR DiagnosticReports.

A delivery is a row (`report.deliveries`, with its idempotency key) and a DeliveryJob written
in one transaction (outbox); the `deliver` consumer runs it: PDF from the archive (checked
against its sha256), DiagnosticReport built and validated, POSTed with retries (svc_report.mis),
each attempt stored as a receipt. A delivery that ends FAILED (4xx, or every attempt failed)
is dead-lettered; RedeliverReport starts a new delivery with a new key.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

from nats.aio.msg import Msg

from gen.medmesh.events.v1 import DeliveryJob
from gen.medmesh.report.v1 import DeliveryStatus, ReportStatus
from medmesh.audit import Actor, AuditActor, record_audit_event
from medmesh.db import Connection, Database
from medmesh.errors import FailedPrecondition, NotFound
from medmesh.jetstream import Topology
from medmesh.keyring import SecretBox, SecretUnreadable
from medmesh.objects import REPORTS_ARCHIVE, ObjectStore
from medmesh.outbox import Outbox
from svc_report import delivery_store, read_store, store
from svc_report.consumers import Attempt, Done, GiveUp, Outcome
from svc_report.fhir import build_diagnostic_report
from svc_report.mis import MisClient, MisDeliveryError, MisEndpoint
from svc_report.model import Delivery, DeliveryTargetRecord, Receipt, ReportRecord
from svc_report.results import ResultSource

SERVICE_ACTOR = Actor("svc_report", ("service",))


async def enqueue_delivery(
    conn: Connection, outbox: Outbox, topology: Topology, report: ReportRecord, *, redelivery: bool
) -> Delivery:
    """In the caller's transaction: a new delivery of `report` and its DeliveryJob."""
    delivery = await delivery_store.insert_delivery(conn, report, redelivery=redelivery)
    job = DeliveryJob(
        job_id=delivery.delivery_id,
        clinic_id=report.clinic_id,
        study_id=report.study_id,
        report_id=report.report_id,
        idempotency_key=delivery.idempotency_key,
        redelivery=redelivery,
        enqueue_time=datetime.now(UTC),
    )
    subject = topology.publish_subject(topology.deliver_subject, report.clinic_id)  # its lane
    await outbox.enqueue(conn, subject, job, msg_id=uuid.UUID(delivery.delivery_id))
    return delivery


class _Failed(Exception):
    """The delivery cannot go ahead (no target, archive broken): fail it without a retry."""


class ReportDeliveries:
    """DeliverReport / RedeliverReport, and the `deliver` consumer's handler."""

    def __init__(
        self,
        *,
        database: Database,
        objects: ObjectStore,
        outbox: Outbox,
        topology: Topology,
        mis: MisClient,
        results: ResultSource,
        secrets: SecretBox,
    ) -> None:
        self._database = database
        self._objects = objects
        self._outbox = outbox
        self._topology = topology
        self._mis = mis
        self._results = results
        self._secrets = secrets

    def _bearer_token(self, target: DeliveryTargetRecord) -> str:
        if target.bearer_token_sealed is None:
            return ""
        try:
            return self._secrets.open(target.bearer_token_sealed)
        except SecretUnreadable as exc:  # the KEK changed without the old key kept
            raise _Failed(f"the MIS bearer token cannot be decrypted: {exc}") from exc

    async def deliver(
        self, clinic_id: str, report_id: str, actor: AuditActor, *, redelivery: bool
    ) -> ReportRecord:
        """Enqueue a push of a READY report. DeliverReport is idempotent while a delivery is
        pending or done; RedeliverReport always pushes again unless one is pending."""
        async with self._database.transaction() as conn:
            report = await store.get_report(conn, clinic_id, report_id, lock=True)
            if report is None:
                raise NotFound(f"reports/{report_id} not found")
            if report.status != ReportStatus.READY:
                raise FailedPrecondition(f"reports/{report_id} is not READY")
            target = await delivery_store.get_target(conn, clinic_id)
            if target is None or not target.enabled:
                raise FailedPrecondition("the clinic has no enabled delivery target")
            pending = report.delivery_status == DeliveryStatus.PENDING
            if redelivery and pending:
                raise FailedPrecondition(f"a delivery of reports/{report_id} is pending")
            if not redelivery and (pending or report.delivery_status == DeliveryStatus.DELIVERED):
                return report
            delivery = await enqueue_delivery(
                conn, self._outbox, self._topology, report, redelivery=redelivery
            )
            await record_audit_event(
                conn,
                clinic_id=clinic_id,
                actor=actor,
                action="report.redeliver" if redelivery else "report.deliver",
                resource=f"reports/{report_id}",
                study_id=report.study_id,
                detail={"idempotency_key": delivery.idempotency_key},
            )
            updated = await store.get_report(conn, clinic_id, report_id)
        assert updated is not None
        return updated

    async def on_job(self, msg: Msg, attempt: Attempt) -> tuple[Outcome, str]:
        """Run one delivery: push, store receipts, settle DELIVERED or FAILED."""
        try:
            job = DeliveryJob.FromString(msg.data)
        except Exception as exc:  # noqa: BLE001 - not a job at all: no retry can help
            return GiveUp(f"undecodable DeliveryJob: {exc}"), ""
        async with self._database.read_connection() as conn:
            delivery = await delivery_store.get_delivery(conn, job.clinic_id, job.idempotency_key)
        if delivery is None:
            return GiveUp(f"no delivery with key {job.idempotency_key}"), job.clinic_id
        if delivery.status != DeliveryStatus.PENDING:
            return Done(), job.clinic_id  # finished before; the ack was lost
        try:
            return await self._push(msg, delivery), job.clinic_id
        except _Failed as exc:
            await self._finish(delivery, DeliveryStatus.FAILED, error=str(exc))
            return GiveUp(str(exc)), job.clinic_id
        except Exception as exc:
            if attempt.last:
                await self._finish(delivery, DeliveryStatus.FAILED, error=f"{exc}")
            raise

    async def _push(self, msg: Msg, delivery: Delivery) -> Outcome:
        clinic_id = delivery.clinic_id
        async with self._database.read_connection() as conn:
            report = await store.get_report(conn, clinic_id, delivery.report_id)
            target = await delivery_store.get_target(conn, clinic_id)
            study = await read_store.get_study(conn, clinic_id, report.study_id) if report else None
        if report is None or report.status != ReportStatus.READY or study is None:
            raise _Failed("the report or its study is no longer available")
        if target is None or not target.enabled:
            raise _Failed("the clinic has no enabled delivery target")
        pdf = await self._objects.get_bytes(REPORTS_ARCHIVE, report.archive_key)
        if hashlib.sha256(pdf).hexdigest() != report.sha256:
            raise _Failed(f"archived PDF {report.archive_key} does not match its sha256")
        results = await self._results.load(clinic_id, report.result_ids)
        resource = build_diagnostic_report(
            report_id=report.report_id,
            version=report.version,
            study=study,
            results=results,
            pdf=pdf,
            issued=report.ready_time or datetime.now(UTC),
        )

        async def on_attempt(receipt: Receipt) -> None:
            await msg.in_progress()  # retries may outlast ack_wait: keep the job ours
            async with self._database.transaction() as conn:
                await delivery_store.add_receipt(conn, delivery, receipt)

        try:
            receipt = await self._mis.post(
                MisEndpoint(target.fhir_base_url, self._bearer_token(target)),
                resource,
                idempotency_key=delivery.idempotency_key,
                report_id=report.report_id,
                on_attempt=on_attempt,
            )
        except MisDeliveryError as exc:
            await self._finish(delivery, DeliveryStatus.FAILED, error=str(exc))
            return GiveUp(str(exc))
        await self._finish(delivery, DeliveryStatus.DELIVERED, mis_id=receipt.mis_id)
        return Done()

    async def _finish(
        self, delivery: Delivery, status: DeliveryStatus, *, mis_id: str = "", error: str = ""
    ) -> None:
        async with self._database.transaction() as conn:
            await delivery_store.finish_delivery(conn, delivery, status, mis_id=mis_id, error=error)
            await record_audit_event(
                conn,
                clinic_id=delivery.clinic_id,
                actor=SERVICE_ACTOR,
                action="report.delivered"
                if status == DeliveryStatus.DELIVERED
                else "report.delivery_failed",
                resource=f"reports/{delivery.report_id}",
                detail={
                    "idempotency_key": delivery.idempotency_key,
                    "mis_id": mis_id,
                    "error": error,
                },
            )
