"""Resource names and domain records ↔ the contract's messages (`medmesh.report.v1`)."""

from __future__ import annotations

import uuid

from gen.medmesh.report.v1 import DeliveryReceipt, DeliveryTarget, Report
from medmesh.errors import InvalidArgument
from svc_report.model import DeliveryTargetRecord, ReportRecord


def _uuid(value: str, field: str, pattern: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument.for_field(field, f"must look like {pattern}") from None


def report_id_from_name(name: str, field: str = "name") -> str:
    """`reports/{report}` → the report id (a UUID)."""
    prefix, _, rest = name.partition("/")
    if prefix != "reports" or not rest or "/" in rest:
        raise InvalidArgument.for_field(field, "must look like reports/{report}")
    return _uuid(rest, field, "reports/{report} with a UUID")


def study_id_from_name(name: str, field: str = "study") -> str:
    """`studies/{study}` → the study id (a UUID)."""
    prefix, _, rest = name.partition("/")
    if prefix != "studies" or not rest or "/" in rest:
        raise InvalidArgument.for_field(field, "must look like studies/{study}")
    return _uuid(rest, field, "studies/{study} with a UUID")


def clinic_from_target_name(name: str, field: str = "name") -> str:
    """`clinics/{clinic}/deliveryTarget` → the clinic id."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "clinics" or not parts[1] or parts[2] != "deliveryTarget":
        raise InvalidArgument.for_field(field, "must look like clinics/{clinic}/deliveryTarget")
    return parts[1]


def target_name(clinic_id: str) -> str:
    """The resource name of a clinic's delivery target."""
    return f"clinics/{clinic_id}/deliveryTarget"


def report_to_proto(report: ReportRecord) -> Report:
    """A report's metadata as the API returns it (the HTML travels separately)."""
    return Report(
        name=f"reports/{report.report_id}",
        report_id=report.report_id,
        study=f"studies/{report.study_id}",
        version=report.version,
        status=report.status,
        failure_reason=report.failure_reason,
        archive_key=report.archive_key,
        sha256=report.sha256,
        size_bytes=report.size_bytes,
        delivery_status=report.delivery_status,
        receipts=[
            DeliveryReceipt(
                attempt_time=r.attempt_time,
                http_status=r.http_status,
                mis_id=r.mis_id,
                error=r.error,
                idempotency_key=r.idempotency_key,
            )
            for r in report.receipts
        ],
        result_ids=list(report.result_ids),
        create_time=report.create_time,
        clinic_id=report.clinic_id,
        ready_time=report.ready_time,
    )


def target_to_proto(target: DeliveryTargetRecord) -> DeliveryTarget:
    """A delivery target as the API returns it: the bearer token is never sent back."""
    return DeliveryTarget(
        name=target_name(target.clinic_id),
        fhir_base_url=target.fhir_base_url,
        bearer_token="",
        bearer_token_set=target.has_bearer_token,
        enabled=target.enabled,
        notify_emails=list(target.notify_emails),
        update_time=target.update_time,
    )
