"""The `report` consumer's handler: a PENDING report → HTML + PDF → archive → READY.

Idempotent by report id: a redelivered job finds the report READY and only finishes what is
left (the mail). The PDF goes to `reports-archive` under a key fixed by the report
(`<clinic>/<study>/<report>/v<version>.pdf`), so a retry overwrites rather than duplicates;
READY, the ReportReady event, the automatic delivery (when the clinic has an enabled target)
and the audit record commit in one transaction after the upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from nats.aio.msg import Msg

from gen.medmesh.common.v1 import AnalysisKind
from gen.medmesh.events.v1 import ReportJob, ReportReady
from gen.medmesh.report.v1 import DeliveryStatus, ReportStatus
from medmesh.audit import record_audit_event
from medmesh.db import Database
from medmesh.errors import NotFound
from medmesh.jetstream import Topology
from medmesh.objects import PROCESSED_IMAGES, REPORTS_ARCHIVE, ObjectStore
from medmesh.outbox import Outbox
from svc_report import delivery_store, read_store, store
from svc_report.config import ReportConfig
from svc_report.consumers import Attempt, Done, GiveUp, Outcome, Retry
from svc_report.delivery import SERVICE_ACTOR, enqueue_delivery
from svc_report.model import AnalysisResult, ReportRecord
from svc_report.notify import ReportNotifier
from svc_report.render import (
    RenderError,
    ReportFacts,
    Thumbnail,
    make_thumbnail,
    render_html,
    render_pdf,
)
from svc_report.results import ResultSource

log = structlog.get_logger(__name__)


class MissingInputs(Exception):
    """The study or some results are not visible (yet): a later attempt may see them."""


@dataclass(frozen=True)
class Rendered:
    """A rendered report."""

    html: str
    pdf: bytes
    sha256: str


def archive_key(report: ReportRecord) -> str:
    """Where a report's PDF lives in `reports-archive`."""
    return f"{report.clinic_id}/{report.study_id}/{report.report_id}/v{report.version}.pdf"


class ReportBuilder:
    """Builds the report a ReportJob names."""

    def __init__(
        self,
        *,
        database: Database,
        objects: ObjectStore,
        results: ResultSource,
        outbox: Outbox,
        topology: Topology,
        notifier: ReportNotifier,
        config: ReportConfig,
    ) -> None:
        self._database = database
        self._objects = objects
        self._results = results
        self._outbox = outbox
        self._topology = topology
        self._notifier = notifier
        self._config = config

    async def on_job(self, msg: Msg, attempt: Attempt) -> tuple[Outcome, str]:
        """Build (if still PENDING), then mail (if not mailed yet)."""
        try:
            job = ReportJob.FromString(msg.data)
        except Exception as exc:  # noqa: BLE001 - not a job at all: no retry can help
            return GiveUp(f"undecodable ReportJob: {exc}"), ""
        async with self._database.read_connection() as conn:
            report = await store.get_report(conn, job.clinic_id, job.report_id)
        if report is None:
            return GiveUp(f"reports/{job.report_id} does not exist"), job.clinic_id
        if report.status == ReportStatus.PENDING:
            try:
                report = await self.build(report)
            except RenderError as exc:
                await self._fail(report, f"rendering failed: {exc}")
                return GiveUp(str(exc)), job.clinic_id
            except Exception as exc:
                if attempt.last:
                    await self._fail(report, f"{type(exc).__name__}: {exc}")
                if isinstance(exc, MissingInputs):
                    return Retry(str(exc)), job.clinic_id
                raise
        if report.status != ReportStatus.READY or report.notified_at is not None:
            return Done(), job.clinic_id
        return await self._notifier.notify(report, last_attempt=attempt.last), job.clinic_id

    async def build(self, report: ReportRecord) -> ReportRecord:
        """Render, archive and commit READY; returns the report as stored."""
        clinic_id = report.clinic_id
        async with self._database.read_connection() as conn:
            study = await read_store.get_study(conn, clinic_id, report.study_id)
            files = await read_store.study_files(conn, clinic_id, report.study_id)
        if study is None:
            raise MissingInputs(f"studies/{report.study_id} is not visible")
        results = await self._results.load(clinic_id, report.result_ids)
        missing = set(report.result_ids) - {r.result_id for r in results}
        if missing:
            raise MissingInputs(f"{len(missing)} result(s) are not visible: {sorted(missing)[:3]}")
        facts = ReportFacts(
            report_id=report.report_id,
            version=report.version,
            study=study,
            files=files,
            results=results,
            generated_at=datetime.now(UTC),
            thumbnails=await self._thumbnails(results),
        )
        rendered = await asyncio.to_thread(self._render, facts)
        key = archive_key(report)
        await self._objects.put_bytes(
            REPORTS_ARCHIVE, key, rendered.pdf, content_type="application/pdf"
        )
        return await self._commit_ready(report, rendered, key)

    def _render(self, facts: ReportFacts) -> Rendered:
        html = render_html(facts, table_rows=self._config.table_rows)
        self._check_size("HTML", len(html.encode()))  # before the costly PDF layout
        pdf = render_pdf(html)
        self._check_size("PDF", len(pdf))
        return Rendered(html, pdf, hashlib.sha256(pdf).hexdigest())

    def _check_size(self, what: str, size: int) -> None:
        """A report over MEDMESH_REPORT_MAX_REPORT_BYTES fails like any rendering failure."""
        limit = self._config.max_report_bytes
        if size > limit:
            raise RenderError(
                f"the report's {what} is {size} bytes, over the limit of {limit}"
                " (MEDMESH_REPORT_MAX_REPORT_BYTES)"
            )

    async def _thumbnails(self, results: Sequence[AnalysisResult]) -> dict[str, Thumbnail]:
        """Thumbnails of the processed images; a missing picture leaves its file without one."""
        thumbnails: dict[str, Thumbnail] = {}
        for result in results:
            if result.kind != AnalysisKind.IMAGE_CLASSIFICATION or not result.processed_key:
                continue
            try:
                data = await self._objects.get_bytes(PROCESSED_IMAGES, result.processed_key)
                thumbnails[result.result_id] = await asyncio.to_thread(
                    make_thumbnail, data, self._config.thumbnail_px
                )
            except (NotFound, OSError, ValueError) as exc:
                log.warning("report.thumbnail_missing", key=result.processed_key, error=str(exc))
        return thumbnails

    async def _commit_ready(
        self, report: ReportRecord, rendered: Rendered, key: str
    ) -> ReportRecord:
        async with self._database.transaction() as conn:
            current = await store.get_report(conn, report.clinic_id, report.report_id, lock=True)
            if current is None or current.status != ReportStatus.PENDING:
                return current or report  # another worker finished it meanwhile
            target = await delivery_store.get_target(conn, report.clinic_id)
            deliver = target is not None and target.enabled
            await store.mark_ready(
                conn,
                report.report_id,
                html=rendered.html,
                archive_key=key,
                sha256=rendered.sha256,
                size_bytes=len(rendered.pdf),
                delivery_status=DeliveryStatus.PENDING
                if deliver
                else DeliveryStatus.NOT_CONFIGURED,
            )
            if deliver:
                await enqueue_delivery(
                    conn, self._outbox, self._topology, current, redelivery=False
                )
            event_id = uuid.uuid4()
            await self._outbox.enqueue(
                conn,
                self._topology.report_ready_subject,
                ReportReady(
                    event_id=str(event_id),
                    clinic_id=report.clinic_id,
                    study_id=report.study_id,
                    report_id=report.report_id,
                    version=report.version,
                    archive_key=key,
                    sha256=rendered.sha256,
                    size_bytes=len(rendered.pdf),
                    event_time=datetime.now(UTC),
                ),
                msg_id=event_id,
            )
            await record_audit_event(
                conn,
                clinic_id=report.clinic_id,
                actor=SERVICE_ACTOR,
                action="report.ready",
                resource=f"reports/{report.report_id}",
                study_id=report.study_id,
                detail={
                    "version": report.version,
                    "sha256": rendered.sha256,
                    "archive_key": key,
                    "result_ids": list(report.result_ids),
                },
            )
            ready = await store.get_report(conn, report.clinic_id, report.report_id)
        assert ready is not None
        log.info(
            "report.ready", report=report.report_id, version=report.version, bytes=len(rendered.pdf)
        )
        return ready

    async def _fail(self, report: ReportRecord, reason: str) -> None:
        async with self._database.transaction() as conn:
            await store.mark_failed(conn, report.report_id, reason)
