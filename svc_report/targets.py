"""Clinics' delivery targets (SetDeliveryTarget / GetDeliveryTarget): where the MIS is and
who else is told by e-mail. Admins of the clinic only; another clinic's target is
PERMISSION_DENIED (the name says which clinic, so there is nothing to hide by NOT_FOUND).

The MIS URL must be absolute https: reports carry PHI. The bearer token is write-only: it is
never returned, and an empty one in a Set keeps the stored token (so changing the URL does not
need the secret again).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from medmesh.audit import AuditActor, record_audit_event
from medmesh.db import Database
from medmesh.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied
from svc_report import delivery_store
from svc_report.model import DeliveryTargetRecord

MAX_NOTIFY_EMAILS = 50
_EMAIL = re.compile(r"[^@\s<>\"',;]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+")


def validate_target(fhir_base_url: str, notify_emails: Sequence[str]) -> list[str]:
    """The normalised mail list; INVALID_ARGUMENT naming each bad field."""
    violations: list[FieldViolation] = []
    parts = urlsplit(fhir_base_url)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        violations.append(
            FieldViolation(
                "delivery_target.fhir_base_url",
                "must be an absolute https URL without query or fragment",
            )
        )
    if parts.username or parts.password:
        violations.append(
            FieldViolation(
                "delivery_target.fhir_base_url", "must not carry credentials; use bearer_token"
            )
        )
    emails: list[str] = []
    for index, address in enumerate(notify_emails):
        if len(address) > 254 or not _EMAIL.fullmatch(address):
            violations.append(
                FieldViolation(
                    f"delivery_target.notify_emails[{index}]", "is not an e-mail address"
                )
            )
        emails.append(address.lower())
    if len(notify_emails) > MAX_NOTIFY_EMAILS:
        violations.append(
            FieldViolation("delivery_target.notify_emails", f"at most {MAX_NOTIFY_EMAILS}")
        )
    if violations:
        raise InvalidArgument("invalid delivery target", violations)
    return list(dict.fromkeys(emails))


def _own_clinic(clinic_id: str, caller_clinic: str) -> None:
    if clinic_id != caller_clinic:
        raise PermissionDenied("a delivery target can only be managed by the clinic's admins")


class DeliveryTargets:
    """Set and get targets, audited."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def set(
        self,
        caller_clinic: str,
        clinic_id: str,
        *,
        fhir_base_url: str,
        bearer_token: str,
        enabled: bool,
        notify_emails: Sequence[str],
        actor: AuditActor,
    ) -> DeliveryTargetRecord:
        """Create or replace the clinic's target."""
        _own_clinic(clinic_id, caller_clinic)
        emails = validate_target(fhir_base_url, notify_emails)
        async with self._database.transaction() as conn:
            target = await delivery_store.upsert_target(
                conn,
                clinic_id,
                fhir_base_url=fhir_base_url,
                bearer_token=bearer_token or None,
                enabled=enabled,
                notify_emails=emails,
                updated_by=f"users/{actor.user_id}",
            )
            await record_audit_event(
                conn,
                clinic_id=clinic_id,
                actor=actor,
                action="report.delivery_target.set",
                resource=f"clinics/{clinic_id}/deliveryTarget",
                detail={
                    "fhir_base_url": fhir_base_url,
                    "enabled": enabled,
                    "bearer_token_changed": bool(bearer_token),
                    "notify_emails": len(emails),
                },
            )
        return target

    async def get(self, caller_clinic: str, clinic_id: str) -> DeliveryTargetRecord:
        """The clinic's target; NOT_FOUND when it has none."""
        _own_clinic(clinic_id, caller_clinic)
        async with self._database.read_connection() as conn:
            target = await delivery_store.get_target(conn, clinic_id)
        if target is None:
            raise NotFound(f"clinics/{clinic_id} has no delivery target")
        return target
