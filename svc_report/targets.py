"""Clinics' delivery targets (SetDeliveryTarget / GetDeliveryTarget): where the MIS is and
who else is told by e-mail. Admins of the clinic only; another clinic's target is
PERMISSION_DENIED (the name says which clinic, so there is nothing to hide by NOT_FOUND).

The MIS URL must be absolute https: reports carry PHI; and its host must resolve to public
addresses only, unless the operator allowed the network (svc_report.egress: the SSRF guard).
The bearer token is write-only: it is never returned, and it is stored encrypted with the
key-encryption key (medmesh.keyring). An empty token in a Set keeps the stored one only while
the URL stays the same: a new URL drops it unless the same call gives a new token, so a
changed (or hijacked) admin setting cannot send the old MIS's credential to a new host.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from medmesh.audit import AuditActor, record_audit_event
from medmesh.db import Database
from medmesh.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied
from medmesh.keyring import SecretBox
from svc_report import delivery_store
from svc_report.egress import EgressPolicy, RefusedDestination, Unresolved
from svc_report.model import DeliveryTargetRecord

URL_FIELD = "delivery_target.fhir_base_url"

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


async def check_destination(policy: EgressPolicy, fhir_base_url: str) -> None:
    """INVALID_ARGUMENT naming the URL field when its host is refused or does not resolve."""
    try:
        await policy.resolve(fhir_base_url)
    except (RefusedDestination, Unresolved) as exc:
        raise InvalidArgument(
            "invalid delivery target",
            [FieldViolation(URL_FIELD, f"is not an address reports may be sent to: {exc}")],
        ) from None


class DeliveryTargets:
    """Set and get targets, audited."""

    def __init__(
        self, database: Database, *, policy: EgressPolicy, secrets: SecretBox
    ) -> None:
        self._database = database
        self._policy = policy
        self._secrets = secrets

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
        await check_destination(self._policy, fhir_base_url)
        sealed = self._secrets.seal(bearer_token) if bearer_token else None
        async with self._database.transaction() as conn:
            before = await delivery_store.get_target(conn, clinic_id, lock=True)
            target = await delivery_store.upsert_target(
                conn,
                clinic_id,
                fhir_base_url=fhir_base_url,
                bearer_token_sealed=sealed,
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
                    "bearer_token_dropped": before is not None
                    and before.has_bearer_token
                    and not target.has_bearer_token,
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
