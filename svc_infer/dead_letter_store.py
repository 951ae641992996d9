"""svc_infer's SQL for job failures and dead letters (results are in `store.py`, the
registry's in `registry_store.py`). Functions take a connection, so callers decide the
transaction; names are schema-qualified (`infer.`); every query that reads dead letters
filters by clinic."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from medmesh.db import Connection


async def record_failure(
    conn: Connection, job_id: str, clinic_id: str, attempts: int, error: str
) -> datetime:
    """Count a failed attempt; returns the job's first failure time."""
    cur = await conn.execute(
        """
        INSERT INTO infer.job_failures
            (job_id, clinic_id, attempts, first_failure_time, last_failure_time, last_error)
        VALUES (%s, %s, %s, now(), now(), %s)
        ON CONFLICT (job_id) DO UPDATE
        SET attempts = EXCLUDED.attempts, last_failure_time = now(),
            last_error = EXCLUDED.last_error
        RETURNING first_failure_time
        """,
        (job_id, clinic_id, attempts, error[:2000]),
    )
    row = await cur.fetchone()
    assert row is not None  # INSERT .. RETURNING always returns the row
    return row["first_failure_time"]


async def failure_attempts(conn: Connection, job_id: str) -> int:
    """How many attempts of a job failed (0 when none did)."""
    cur = await conn.execute("SELECT attempts FROM infer.job_failures WHERE job_id = %s", (job_id,))
    row = await cur.fetchone()
    return int(row["attempts"]) if row else 0


@dataclass(frozen=True)
class DeadLetterRow:
    """One indexed dead letter."""

    dead_letter_id: str
    stream_sequence: int
    subject: str
    clinic_id: str
    payload: bytes
    error: str
    attempts: int
    first_failure_time: datetime
    last_failure_time: datetime
    msg_id: str
    headers: dict[str, str]
    replay_time: datetime | None


def _dead_letter(row: Mapping[str, Any]) -> DeadLetterRow:
    return DeadLetterRow(
        dead_letter_id=str(row["dead_letter_id"]),
        stream_sequence=int(row["stream_sequence"]),
        subject=row["subject"],
        clinic_id=row["clinic_id"],
        payload=bytes(row["payload"]),
        error=row["error"],
        attempts=int(row["attempts"]),
        first_failure_time=row["first_failure_time"],
        last_failure_time=row["last_failure_time"],
        msg_id=row["msg_id"],
        headers=dict(row["headers"]),
        replay_time=row["replay_time"],
    )


async def index_dead_letter(conn: Connection, letter: DeadLetterRow) -> bool:
    """Add a dead letter to the index; False when its stream sequence is there already."""
    cur = await conn.execute(
        """
        INSERT INTO infer.dead_letters
            (dead_letter_id, stream_sequence, subject, clinic_id, payload, error, attempts,
             first_failure_time, last_failure_time, msg_id, headers)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (stream_sequence) DO NOTHING
        RETURNING dead_letter_id
        """,
        (
            uuid.UUID(letter.dead_letter_id),
            letter.stream_sequence,
            letter.subject,
            letter.clinic_id,
            letter.payload,
            letter.error,
            letter.attempts,
            letter.first_failure_time,
            letter.last_failure_time,
            letter.msg_id,
            Jsonb(letter.headers),
        ),
    )
    return await cur.fetchone() is not None


async def list_dead_letters(
    conn: Connection,
    clinic_id: str,
    subject: str,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[DeadLetterRow]:
    """The clinic's dead letters, newest failure first, optionally of one subject."""
    conditions = ["clinic_id = %s"]
    params: list[Any] = [clinic_id]
    if subject:
        conditions.append("subject = %s")
        params.append(subject)
    if after is not None:
        conditions.append("(last_failure_time, dead_letter_id) < (%s, %s)")
        params.extend(after)
    params.append(limit)
    cur = await conn.execute(
        "SELECT * FROM infer.dead_letters WHERE "  # noqa: S608 - conditions are constants
        + " AND ".join(conditions)
        + " ORDER BY last_failure_time DESC, dead_letter_id DESC LIMIT %s",
        params,
    )
    return [_dead_letter(r) for r in await cur.fetchall()]


async def lock_dead_letter(
    conn: Connection, clinic_id: str, dead_letter_id: uuid.UUID
) -> DeadLetterRow | None:
    """One of the clinic's dead letters, locked for a replay."""
    cur = await conn.execute(
        "SELECT * FROM infer.dead_letters WHERE dead_letter_id = %s AND clinic_id = %s FOR UPDATE",
        (dead_letter_id, clinic_id),
    )
    row = await cur.fetchone()
    return _dead_letter(row) if row else None


async def mark_replayed(conn: Connection, dead_letter_id: uuid.UUID) -> datetime:
    """Set a dead letter's replay time; returns it."""
    cur = await conn.execute(
        "UPDATE infer.dead_letters SET replay_time = now() WHERE dead_letter_id = %s "
        "RETURNING replay_time",
        (dead_letter_id,),
    )
    row = await cur.fetchone()
    assert row is not None  # the row was locked by the caller
    return row["replay_time"]


async def forget_failures(conn: Connection, job_id: str) -> None:
    """A replayed job starts its attempts afresh."""
    await conn.execute("DELETE FROM infer.job_failures WHERE job_id = %s", (job_id,))
