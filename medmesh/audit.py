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


async def record_audit_events(
    conn: psycopg.AsyncConnection[Any],
    actor: AuditActor,
    action: str,
    events: Sequence[tuple[str, str, str | None, Mapping[str, Any]]],
) -> None:
    """`record_audit_event` for many (clinic, resource, study, detail) of one actor and
    action, in one statement (for batches; the ids are not returned)."""
    if not events:
        return
    await conn.execute(
        """
        INSERT INTO audit.events
            (clinic_id, actor_user_id, actor_roles, action, resource, study_id, detail)
        SELECT e.clinic_id, %s, %s::text[], %s, e.resource, e.study_id, e.detail
        FROM unnest(%s::text[], %s::text[], %s::text[], %s::jsonb[])
            WITH ORDINALITY AS e(clinic_id, resource, study_id, detail, position)
        ORDER BY e.position
        """,
        (
            actor.user_id,
            list(actor.roles),
            action,
            [e[0] for e in events],
            [e[1] for e in events],
            [e[2] for e in events],
            [Jsonb(dict(e[3])) for e in events],
        ),
    )
