"""Reading reports: GetReport, ListReports, DownloadReport, GetReportDownloadUrl.

Clinic-scoped: another clinic's report is NOT_FOUND, exactly like one that does not exist.
Every view and download is audited (`report.view`, `report.download`,
`report.download_url`) in the transaction that reads the report, so no one sees a report
without a record of it; a refused one (NOT_FOUND: another clinic's report or study) leaves an
`access.denied` row under the caller's clinic. A PDF is checked against its stored sha256
before a byte is sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gen.medmesh.report.v1 import ReportStatus
from medmesh.audit import AuditActor, audit_denials, record_audit_event, record_denied_access
from medmesh.db import Connection, Database
from medmesh.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from medmesh.identity import Identity
from medmesh.objects import REPORTS_ARCHIVE, ObjectStore
from svc_report import read_store, store
from svc_report.model import ReportRecord

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ReportPage:
    """One page of ListReports."""

    reports: list[ReportRecord]
    next_page_token: str


def encode_page_token(report: ReportRecord) -> str:
    """An opaque cursor after `report` (create_time, report_id)."""
    raw = f"{report.create_time.isoformat()}|{report.report_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[datetime, str]:
    """The cursor of a page token; INVALID_ARGUMENT when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        when, _, report_id = raw.partition("|")
        return datetime.fromisoformat(when), report_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgument.for_field("page_token", "is not a token from ListReports") from None


def _caller(clinic_id: str, actor: AuditActor) -> Identity:
    return Identity(actor.user_id, clinic_id, frozenset(actor.roles))


class ReportReader:
    """The read RPCs' logic."""

    def __init__(self, database: Database, objects: ObjectStore, *, url_ttl_s: int) -> None:
        self._database = database
        self._objects = objects
        self._url_ttl = timedelta(seconds=url_ttl_s)

    async def _audited(
        self, conn: Connection, clinic_id: str, report_id: str, actor: AuditActor, action: str
    ) -> ReportRecord:
        report = await store.get_report(conn, clinic_id, report_id, with_html=True)
        if report is None:
            raise NotFound(f"reports/{report_id} not found")
        await record_audit_event(
            conn,
            clinic_id=clinic_id,
            actor=actor,
            action=action,
            resource=f"reports/{report_id}",
            study_id=report.study_id,
            detail={"version": report.version, "sha256": report.sha256},
        )
        return report

    async def get(self, clinic_id: str, report_id: str, actor: AuditActor) -> ReportRecord:
        """The report with its HTML (empty unless READY); audited as `report.view`."""
        async with (
            audit_denials(
                self._database, _caller(clinic_id, actor), "GetReport", f"reports/{report_id}"
            ),
            self._database.transaction() as conn,
        ):
            return await self._audited(conn, clinic_id, report_id, actor, "report.view")

    async def list(
        self,
        clinic_id: str,
        *,
        study_id: str | None,
        page_size: int,
        page_token: str,
        actor: AuditActor | None = None,
    ) -> ReportPage:
        """The clinic's reports newest first. NOT_FOUND for a study filter naming a study the
        clinic cannot see (and has no reports of); audited as denied when `actor` is given."""
        if page_size < 0:
            raise InvalidArgument.for_field("page_size", "must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(page_token) if page_token else None
        async with self._database.read_connection() as conn:
            rows = await store.list_reports(
                conn, clinic_id, study_id=study_id, after=after, limit=size + 1
            )
            hidden = (
                study_id is not None
                and not rows
                and after is None
                and await read_store.get_study(conn, clinic_id, study_id) is None
            )
        if hidden:
            if actor is not None:
                await record_denied_access(
                    self._database,
                    _caller(clinic_id, actor),
                    rpc="ListReports",
                    resource=f"studies/{study_id}",
                    code="NOT_FOUND",
                )
            raise NotFound(f"studies/{study_id} not found")
        page = rows[:size]
        token = encode_page_token(page[-1]) if len(rows) > size else ""
        return ReportPage(page, token)

    async def _ready_for_download(
        self, clinic_id: str, report_id: str, actor: AuditActor, action: str, rpc: str
    ) -> ReportRecord:
        async with (
            audit_denials(self._database, _caller(clinic_id, actor), rpc, f"reports/{report_id}"),
            self._database.transaction() as conn,
        ):
            report = await self._audited(conn, clinic_id, report_id, actor, action)
        if report.status != ReportStatus.READY:
            raise FailedPrecondition(f"reports/{report_id} is not READY")
        return report

    async def download(
        self, clinic_id: str, report_id: str, actor: AuditActor
    ) -> tuple[ReportRecord, bytes]:
        """The report and its PDF, verified; audited as `report.download`."""
        report = await self._ready_for_download(
            clinic_id, report_id, actor, "report.download", "DownloadReport"
        )
        try:
            pdf = await self._objects.get_bytes(REPORTS_ARCHIVE, report.archive_key)
        except NotFound:
            raise DataLoss(f"the archived PDF of reports/{report_id} is missing") from None
        if hashlib.sha256(pdf).hexdigest() != report.sha256:
            raise DataLoss(f"the archived PDF of reports/{report_id} does not match its sha256")
        return report, pdf

    async def download_url(
        self, clinic_id: str, report_id: str, actor: AuditActor
    ) -> tuple[str, datetime]:
        """A presigned GET URL of the PDF and when it expires; audited `report.download_url`."""
        report = await self._ready_for_download(
            clinic_id, report_id, actor, "report.download_url", "GetReportDownloadUrl"
        )
        expires = datetime.now(UTC) + self._url_ttl
        url = await self._objects.presigned_get_url(
            REPORTS_ARCHIVE, report.archive_key, expires=self._url_ttl
        )
        return url, expires
