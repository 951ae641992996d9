"""Writing to the shared, append-only `audit.events` table (schema: migrations_sql/audit).

Call `record_audit_event` with the connection of the transaction that makes the change, so
the change and its audit row commit or roll back together. Reads of patient data are audited
too (`record_access`, one INSERT), and so are refused calls (`audit_denials`,
`DeniedAccessRecorder`: an `access.denied` row under the caller's clinic). A study's trail is
read back with `list_study_events`, its detail reduced to allow-listed keys (`safe_detail`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg
import structlog
from psycopg.rows import dict_row, scalar_row
from psycopg.types.json import Jsonb

from medmesh.db import Database
from medmesh.errors import NotFound, PermissionDenied
from medmesh.identity import Identity


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


# ----------------------------------------------------------------------------- reads and denials

DENIED_ACTION = "access.denied"
"""The action of a refused call (NOT_FOUND for another clinic's resource, PERMISSION_DENIED)."""

_log = structlog.get_logger(__name__)


async def record_access(
    database: Database,
    identity: Identity,
    action: str,
    resource: str,
    *,
    study_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """One audit row for a read (`result.read`, `result.image_url`): a single INSERT on an
    autocommit connection of the primary (no BEGIN/COMMIT), so a cached read pays one
    statement for it, plus the pool's liveness ping at checkout."""
    async with database.write_connection() as conn:
        await record_audit_event(
            conn,
            clinic_id=identity.clinic_id,
            actor=Actor(identity.user_id, sorted(identity.roles)),
            action=action,
            resource=resource,
            study_id=study_id,
            detail=detail,
        )


async def record_denied_access(
    database: Database, identity: Identity, *, rpc: str, resource: str, code: str
) -> None:
    """An `access.denied` row under the *caller's* clinic. It names only what the caller
    sent (`resource`) and never links to a study (study_id stays NULL), so it shows in no
    study's trail and says nothing about another clinic's data. A failure to record is
    logged, never raised: the caller gets the refusal either way."""
    try:
        await record_access(
            database, identity, DENIED_ACTION, resource, detail={"rpc": rpc, "code": code}
        )
    except Exception as exc:  # noqa: BLE001 - the refusal must still reach the caller
        _log.warning("audit of a denied call failed", rpc=rpc, error=str(exc))


@asynccontextmanager
async def audit_denials(
    database: Database, identity: Identity, rpc: str, resource: str
) -> AsyncIterator[None]:
    """Around a read: NOT_FOUND or PERMISSION_DENIED leaves an `access.denied` row, then
    propagates unchanged."""
    try:
        yield
    except (NotFound, PermissionDenied) as exc:
        code = "NOT_FOUND" if isinstance(exc, NotFound) else "PERMISSION_DENIED"
        await record_denied_access(database, identity, rpc=rpc, resource=resource, code=code)
        raise


class DeniedAccessRecorder:
    """The auth interceptor's hook: a caller whose roles do not allow an RPC leaves an
    `access.denied` row (PERMISSION_DENIED) in its clinic."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def __call__(self, identity: Identity, rpc: str, resource: str) -> None:
        await record_denied_access(
            self._database, identity, rpc=rpc, resource=resource, code="PERMISSION_DENIED"
        )


# Keys of `detail` an AuditEvent may show: facts about files, models and reports. Anything
# else (tokens, idempotency keys, object keys, client addresses, error texts) stays in the
# table for operators and never leaves through the API.
SAFE_DETAIL_KEYS: frozenset[str] = frozenset(
    {
        "file_id",
        "kind",
        "sha256",
        "size_bytes",
        "returned",
        "objects_removed",
        "model",
        "model_version",
        "arm",
        "preprocessing_version",
        "version",
        "result_ids",
        "enqueued",
        "rpc",
        "code",
    }
)


def safe_detail(detail: Mapping[str, Any] | None) -> dict[str, str]:
    """The allow-listed, scalar (or list of scalars) entries of `detail`, as strings."""
    shown: dict[str, str] = {}
    for key, value in (detail or {}).items():
        if key not in SAFE_DETAIL_KEYS:
            continue
        if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
            shown[key] = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            shown[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            shown[key] = str(value)
    return shown


@dataclass(frozen=True)
class AuditRecord:
    """One `audit.events` row as a study's trail shows it."""

    event_id: int
    occurred_at: datetime
    actor_user_id: str
    actor_roles: tuple[str, ...]
    action: str
    resource: str
    detail: dict[str, str]


async def list_study_events(
    conn: psycopg.AsyncConnection[Any],
    clinic_id: str,
    study_id: str,
    *,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[AuditRecord]:
    """A study's events recorded under `clinic_id`, oldest first, after the (time, id)
    cursor; detail reduced to `safe_detail`."""
    cursor_clause = "AND (occurred_at, id) > (%s, %s)" if after else ""
    params: list[Any] = [study_id, clinic_id, *(after or ()), limit]
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT id, occurred_at, actor_user_id, actor_roles, action, resource, detail"  # noqa: S608 - constant clause
            f" FROM audit.events WHERE study_id = %s AND clinic_id = %s {cursor_clause}"
            " ORDER BY occurred_at, id LIMIT %s",
            params,
        )
        rows = await cur.fetchall()
    return [
        AuditRecord(
            event_id=int(r["id"]),
            occurred_at=r["occurred_at"],
            actor_user_id=r["actor_user_id"],
            actor_roles=tuple(r["actor_roles"] or ()),
            action=r["action"],
            resource=r["resource"],
            detail=safe_detail(r["detail"]),
        )
        for r in rows
    ]
