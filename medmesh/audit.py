"""Writing to the shared, append-only `audit.events` table (schema: migrations_sql/audit).

Call `record_audit_event` with the connection of the transaction that makes the change, so
the change and its audit row commit or roll back together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg.rows import scalar_row
from psycopg.types.json import Jsonb


class AuditActor(Protocol):
    """Who acted: any principal with a user id and roles (the auth principal fits)."""

    @property
    def user_id(self) -> str: ...

    @property
    def roles(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class Actor:
    """A plain AuditActor, for callers that have no principal object (jobs, the CLI)."""

    user_id: str
    roles: Sequence[str] = ()


async def record_audit_event(
    conn: psycopg.AsyncConnection[Any],
    *,
    clinic_id: str,
    actor: AuditActor,
    action: str,
    resource: str,
    study_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> int:
    """Append one audit event and return its id.

    `action` is a verb such as `study.upload` or `result.store`; `resource` names the object
    acted on (`studies/<id>`); `detail` holds what else an auditor needs (model version,
    delivery receipt), as JSON.
    """
    async with conn.cursor(row_factory=scalar_row) as cur:
        await cur.execute(
            """
            INSERT INTO audit.events
                (clinic_id, actor_user_id, actor_roles, action, resource, study_id, detail)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            RETURNING id
            """,
            (
                clinic_id,
                actor.user_id,
                list(actor.roles),
                action,
                resource,
                study_id,
                Jsonb(dict(detail or {})),
            ),
        )
        event_id = await cur.fetchone()
    if event_id is None:  # pragma: no cover - INSERT ... RETURNING always returns the row
        raise RuntimeError("INSERT INTO audit.events returned no id")
    return int(event_id)
