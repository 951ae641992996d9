"""The ReportService servicer: proto ↔ domain and nothing else.

Everything is scoped to the caller's clinic (from the token). Generating and delivering need
an admin or clinician, delivery targets an admin, reading any role of the clinic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from gen.medmesh.report.v1 import (
    DeliverReportRequest,
    DeliverReportResponse,
    DownloadReportRequest,
    DownloadReportResponse,
    GenerateReportRequest,
    GenerateReportResponse,
    GetDeliveryTargetRequest,
    GetDeliveryTargetResponse,
    GetReportDownloadUrlRequest,
    GetReportDownloadUrlResponse,
    GetReportRequest,
    GetReportResponse,
    ListReportsRequest,
    ListReportsResponse,
    RedeliverReportRequest,
    RedeliverReportResponse,
    ReportStatus,
    SetDeliveryTargetRequest,
    SetDeliveryTargetResponse,
)
from medmesh.audit import Actor
from medmesh.errors import InvalidArgument
from medmesh.identity import ADMIN, ADMINS, ANY_ROLE, CLINICIAN, RoleRules, current_identity
from svc_report.convert import (
    clinic_from_target_name,
    report_id_from_name,
    report_to_proto,
    study_id_from_name,
    target_to_proto,
)
from svc_report.delivery import ReportDeliveries
from svc_report.report_requests import ReportRequests
from svc_report.reports import CHUNK_BYTES, ReportReader
from svc_report.targets import DeliveryTargets

REPORT_SERVICE = "medmesh.report.v1.ReportService"

REPORT_WRITERS: frozenset[str] = frozenset({ADMIN, CLINICIAN})

REPORT_RULES: RoleRules = {
    "GenerateReport": REPORT_WRITERS,
    "GetReport": ANY_ROLE,
    "ListReports": ANY_ROLE,
    "DownloadReport": ANY_ROLE,
    "GetReportDownloadUrl": ANY_ROLE,
    "DeliverReport": REPORT_WRITERS,
    "RedeliverReport": REPORT_WRITERS,
    "SetDeliveryTarget": ADMINS,
    "GetDeliveryTarget": ADMINS,
}
ROLE_RULES: dict[str, RoleRules] = {REPORT_SERVICE: REPORT_RULES}


@dataclass(frozen=True)
class ReportDependencies:
    """What the servicer uses: domain objects built in `app.setup`."""

    requests: ReportRequests
    reader: ReportReader
    deliveries: ReportDeliveries
    targets: DeliveryTargets


def _caller() -> tuple[Actor, str]:
    identity = current_identity()
    return Actor(identity.user_id, tuple(sorted(identity.roles))), identity.clinic_id


class ReportServicer:
    """medmesh.report.v1.ReportService."""

    def __init__(self, dependencies: ReportDependencies) -> None:
        self._deps = dependencies

    async def generate_report(
        self, request: GenerateReportRequest, _context: Any
    ) -> GenerateReportResponse:
        """A report of the study's current results (the existing one for the same set)."""
        actor, clinic_id = _caller()
        requested = await self._deps.requests.generate(
            clinic_id, study_id_from_name(request.study), actor
        )
        return GenerateReportResponse(report=report_to_proto(requested.report))

    async def get_report(self, request: GetReportRequest, _context: Any) -> GetReportResponse:
        """Metadata and HTML; audited."""
        actor, clinic_id = _caller()
        report = await self._deps.reader.get(clinic_id, report_id_from_name(request.name), actor)
        html = report.html if report.status == ReportStatus.READY else ""
        return GetReportResponse(report=report_to_proto(report), html=html)

    async def list_reports(self, request: ListReportsRequest, _context: Any) -> ListReportsResponse:
        """The clinic's reports, newest first."""
        actor, clinic_id = _caller()
        study_id = study_id_from_name(request.study) if request.study else None
        page = await self._deps.reader.list(
            clinic_id,
            study_id=study_id,
            page_size=request.page_size,
            page_token=request.page_token,
            actor=actor,
        )
        return ListReportsResponse(
            reports=[report_to_proto(r) for r in page.reports],
            next_page_token=page.next_page_token,
        )

    async def download_report(
        self, request: DownloadReportRequest, _context: Any
    ) -> AsyncIterator[DownloadReportResponse]:
        """The PDF in chunks of at most 1 MiB; metadata in the first message."""
        actor, clinic_id = _caller()
        report, pdf = await self._deps.reader.download(
            clinic_id, report_id_from_name(request.name), actor
        )
        for offset in range(0, max(len(pdf), 1), CHUNK_BYTES):
            chunk = pdf[offset : offset + CHUNK_BYTES]
            if offset == 0:
                yield DownloadReportResponse(
                    chunk=chunk,
                    content_type="application/pdf",
                    size_bytes=report.size_bytes,
                    sha256=report.sha256,
                )
            else:
                yield DownloadReportResponse(chunk=chunk)

    async def get_report_download_url(
        self, request: GetReportDownloadUrlRequest, _context: Any
    ) -> GetReportDownloadUrlResponse:
        """A short-lived presigned GET URL."""
        actor, clinic_id = _caller()
        url, expires = await self._deps.reader.download_url(
            clinic_id, report_id_from_name(request.name), actor
        )
        return GetReportDownloadUrlResponse(url=url, expire_time=expires)

    async def deliver_report(
        self, request: DeliverReportRequest, _context: Any
    ) -> DeliverReportResponse:
        """Push to the MIS (idempotent while pending or delivered)."""
        actor, clinic_id = _caller()
        report = await self._deps.deliveries.deliver(
            clinic_id, report_id_from_name(request.name), actor, redelivery=False
        )
        return DeliverReportResponse(report=report_to_proto(report))

    async def redeliver_report(
        self, request: RedeliverReportRequest, _context: Any
    ) -> RedeliverReportResponse:
        """Push to the MIS again with a new idempotency key."""
        actor, clinic_id = _caller()
        report = await self._deps.deliveries.deliver(
            clinic_id, report_id_from_name(request.name), actor, redelivery=True
        )
        return RedeliverReportResponse(report=report_to_proto(report))

    async def set_delivery_target(
        self, request: SetDeliveryTargetRequest, _context: Any
    ) -> SetDeliveryTargetResponse:
        """Create or replace the clinic's target."""
        actor, clinic_id = _caller()
        target = request.delivery_target
        if target is None:
            raise InvalidArgument.for_field("delivery_target", "is required")
        stored = await self._deps.targets.set(
            clinic_id,
            clinic_from_target_name(target.name, "delivery_target.name"),
            fhir_base_url=target.fhir_base_url,
            bearer_token=target.bearer_token,
            enabled=target.enabled,
            notify_emails=list(target.notify_emails),
            actor=actor,
        )
        return SetDeliveryTargetResponse(delivery_target=target_to_proto(stored))

    async def get_delivery_target(
        self, request: GetDeliveryTargetRequest, _context: Any
    ) -> GetDeliveryTargetResponse:
        """The clinic's target, token blanked."""
        _, clinic_id = _caller()
        target = await self._deps.targets.get(clinic_id, clinic_from_target_name(request.name))
        return GetDeliveryTargetResponse(delivery_target=target_to_proto(target))
