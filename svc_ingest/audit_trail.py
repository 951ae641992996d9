"""A study's audit trail (ListStudyAuditEvents): the `audit.events` rows every service wrote
about the study under the caller's clinic, oldest first, with only allow-listed detail.

Reading the trail is itself audited (`study.audit.read`). A study of another clinic is
NOT_FOUND and leaves an `access.denied` row under the caller's clinic.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime

from gen.medmesh.common.v1 import Role
from gen.medmesh.ingest.v1 import AuditEvent
from medmesh.audit import AuditRecord, audit_denials, list_study_events
from medmesh.db import Database
from medmesh.errors import InvalidArgument
from medmesh.identity import Identity
from svc_ingest.studies import audit, require_study

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500

# Actors that are the platform's own processes, not users (see each service's *_ACTOR).
PLATFORM_ACTORS = frozenset({"svc_auth", "svc_ingest", "svc_infer", "svc_report", "bootstrap"})


def encode_page_token(record: AuditRecord, study_id: uuid.UUID) -> str:
    """An opaque cursor after `record`, bound to the study it was issued for."""
    raw = json.dumps(
        {"t": record.occurred_at.isoformat(), "id": record.event_id, "s": str(study_id)}
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, study_id: uuid.UUID) -> tuple[datetime, int] | None:
    """The cursor in `token`; INVALID_ARGUMENT for garbage or another study's token."""
    if not token:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor = datetime.fromisoformat(raw["t"]), int(raw["id"])
        study = str(raw["s"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument.for_field("page_token", "is not a valid page token") from None
    if study != str(study_id):
        raise InvalidArgument.for_field("page_token", "was issued for another study")
    return cursor


def _role(name: str) -> Role:
    try:
        return Role[name.upper()]
    except KeyError:
        return Role.UNSPECIFIED


def audit_event(record: AuditRecord, study_id: uuid.UUID) -> AuditEvent:
    """A trail row as the contract's AuditEvent."""
    actor = record.actor_user_id
    return AuditEvent(
        name=f"studies/{study_id}/auditEvents/{record.event_id}",
        audit_event_id=str(record.event_id),
        event_time=record.occurred_at,
        actor=f"services/{actor}" if actor in PLATFORM_ACTORS else f"users/{actor}",
        actor_roles=[r for r in (_role(n) for n in record.actor_roles) if r != Role.UNSPECIFIED],
        action=record.action,
        resource=record.resource,
        detail=dict(record.detail),
    )


class AuditTrail:
    """ListStudyAuditEvents' logic."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def list_events(
        self, identity: Identity, study_id: uuid.UUID, *, page_size: int, page_token: str
    ) -> tuple[list[AuditRecord], str]:
        """A page of the study's trail and the next page's token ('' on the last)."""
        if page_size < 0:
            raise InvalidArgument.for_field("page_size", "must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(page_token, study_id)
        resource = f"studies/{study_id}"
        async with (
            audit_denials(self._database, identity, "ListStudyAuditEvents", resource),
            self._database.transaction() as conn,
        ):
            await require_study(conn, identity, study_id)
            rows = await list_study_events(
                conn, identity.clinic_id, str(study_id), after=after, limit=size + 1
            )
            await audit(conn, identity, "study.audit.read", study_id, returned=min(len(rows), size))
        if len(rows) > size:
            return rows[:size], encode_page_token(rows[size - 1], study_id)
        return rows, ""
