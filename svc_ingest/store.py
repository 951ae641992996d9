# ruff: noqa: S608 - SQL text is built from constant column lists; values are always parameters
"""SQL of svc_ingest: studies, their files (`medical_data`) and processed events.

Every function takes the connection of the caller's transaction, and every read of a study or
file filters by clinic: another clinic's rows are simply not found. Statuses and kinds are
stored as their proto enum numbers.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from medmesh.db import Connection

Row = dict[str, Any]

PENDING_UPLOAD = 1
REJECTED = 7
_DEAD_FILE_STATUSES = (PENDING_UPLOAD, REJECTED)

_STUDY_COLUMNS = (
    "study_id, clinic_id, patient_ref, description, status, failure_reason, creator,"
    " create_time, update_time"
)
_FILE_COLUMNS = (
    "file_id, study_id, clinic_id, kind, file_name, content_type, size_bytes, sha256,"
    " object_key, status, image_width, image_height, failure_reason, job_id, result_id,"
    " create_time, update_time, completion_key, completion_started"
)


async def _one(conn: Connection, query: str, params: Sequence[Any]) -> Row | None:
    cur = await conn.execute(query, params)  # type: ignore[arg-type]  # static SQL text
    return await cur.fetchone()


async def _all(conn: Connection, query: str, params: Sequence[Any]) -> list[Row]:
    cur = await conn.execute(query, params)  # type: ignore[arg-type]  # static SQL text
    return await cur.fetchall()


async def insert_study(
    conn: Connection,
    *,
    study_id: uuid.UUID,
    clinic_id: str,
    patient_ref: str,
    description: str,
    status: int,
    creator: str,
    now: datetime,
) -> Row:
    """A new study; returns its row."""
    row = await _one(
        conn,
        f"INSERT INTO ingest.studies ({_STUDY_COLUMNS})"
        " VALUES (%s, %s, %s, %s, %s, '', %s, %s, %s)"
        f" RETURNING {_STUDY_COLUMNS}",
        (study_id, clinic_id, patient_ref, description, status, creator, now, now),
    )
    assert row is not None
    return row


async def get_study(
    conn: Connection, clinic_id: str, study_id: uuid.UUID, *, for_update: bool = False
) -> Row | None:
    """The study if it exists in this clinic; `for_update` locks it (status changes)."""
    lock = " FOR UPDATE" if for_update else ""
    return await _one(
        conn,
        f"SELECT {_STUDY_COLUMNS} FROM ingest.studies WHERE study_id = %s AND clinic_id = %s{lock}",
        (study_id, clinic_id),
    )


async def lock_study_by_id(conn: Connection, study_id: uuid.UUID) -> Row | None:
    """The study by id alone, locked: for events whose clinic is checked against the row."""
    return await _one(
        conn,
        f"SELECT {_STUDY_COLUMNS} FROM ingest.studies WHERE study_id = %s FOR UPDATE",
        (study_id,),
    )


async def list_studies(
    conn: Connection,
    *,
    clinic_id: str,
    patient_ref: str,
    status: int,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row]:
    """A page of the clinic's studies, newest first, then by id (stable under inserts)."""
    conditions = ["clinic_id = %s"]
    params: list[Any] = [clinic_id]
    if patient_ref:
        conditions.append("patient_ref = %s")
        params.append(patient_ref)
    if status:
        conditions.append("status = %s")
        params.append(status)
    if after is not None:
        conditions.append("(create_time, study_id) < (%s, %s)")
        params.extend(after)
    params.append(limit)
    return await _all(
        conn,
        f"SELECT {_STUDY_COLUMNS} FROM ingest.studies WHERE {' AND '.join(conditions)}"
        " ORDER BY create_time DESC, study_id DESC LIMIT %s",
        params,
    )


async def set_study_status(
    conn: Connection, study_id: uuid.UUID, *, status: int, failure_reason: str, now: datetime
) -> None:
    """Record a study's new status (and touch update_time)."""
    await conn.execute(
        "UPDATE ingest.studies SET status = %s, failure_reason = %s, update_time = %s"
        " WHERE study_id = %s",
        (status, failure_reason, now, study_id),
    )


async def touch_study(conn: Connection, study_id: uuid.UUID, now: datetime) -> None:
    """A file of the study changed."""
    await conn.execute(
        "UPDATE ingest.studies SET update_time = %s WHERE study_id = %s", (now, study_id)
    )


async def delete_study(conn: Connection, study_id: uuid.UUID) -> list[Row]:
    """Delete the study and its files; returns the deleted file rows (object_key, size_bytes,
    status, completion_key)."""
    rows = await _all(
        conn,
        "DELETE FROM ingest.medical_data WHERE study_id = %s"
        " RETURNING object_key, size_bytes, status, completion_key",
        (study_id,),
    )
    await conn.execute("DELETE FROM ingest.studies WHERE study_id = %s", (study_id,))
    return rows


async def referenced_objects(conn: Connection, keys: Sequence[str]) -> set[str]:
    """Which of `keys` some remaining file still points at (shared by de-duplication)."""
    rows = await _all(
        conn,
        "SELECT DISTINCT object_key FROM ingest.medical_data WHERE object_key = ANY(%s)",
        (list(keys),),
    )
    return {r["object_key"] for r in rows}


async def list_files(conn: Connection, study_id: uuid.UUID) -> list[Row]:
    """The study's files, oldest first."""
    return await _all(
        conn,
        f"SELECT {_FILE_COLUMNS} FROM ingest.medical_data WHERE study_id = %s"
        " ORDER BY create_time, file_id",
        (study_id,),
    )


async def get_file(
    conn: Connection,
    clinic_id: str,
    study_id: uuid.UUID,
    file_id: uuid.UUID,
    *,
    for_update: bool = False,
) -> Row | None:
    """One file of one of the clinic's studies."""
    lock = " FOR UPDATE" if for_update else ""
    return await _one(
        conn,
        f"SELECT {_FILE_COLUMNS} FROM ingest.medical_data"
        f" WHERE file_id = %s AND study_id = %s AND clinic_id = %s{lock}",
        (file_id, study_id, clinic_id),
    )


async def get_file_by_id(conn: Connection, file_id: uuid.UUID) -> Row | None:
    """A file by id alone, locked for an update of its status (event handlers check its
    clinic against the event). FOR NO KEY UPDATE, what an UPDATE of non-key columns takes:
    an upload's FOR KEY SHARE on a file it shares bytes with does not wait for it."""
    return await _one(
        conn,
        f"SELECT {_FILE_COLUMNS} FROM ingest.medical_data WHERE file_id = %s FOR NO KEY UPDATE",
        (file_id,),
    )


async def find_study_file_by_sha(conn: Connection, study_id: uuid.UUID, sha256: str) -> Row | None:
    """The study's accepted file with these bytes, if any."""
    return await _one(
        conn,
        f"SELECT {_FILE_COLUMNS} FROM ingest.medical_data"
        " WHERE study_id = %s AND sha256 = %s AND status NOT IN (%s, %s)",
        (study_id, sha256, *_DEAD_FILE_STATUSES),
    )


async def find_clinic_object_by_sha(
    conn: Connection, clinic_id: str, sha256: str, *, lock: bool = True
) -> str | None:
    """An object of the clinic holding these bytes, locked (unless `lock` is False) so a
    concurrent delete of the study that owns it waits for us (or we see it gone).

    FOR KEY SHARE, the weakest lock a DELETE waits for: the row is usually in another study,
    and a status change of it (the relay moving it to QUEUED, a result arriving) must not
    wait for us, nor we for it. With FOR UPDATE here, an upload holding its own study's lock
    and the outbox relay holding this file's lock while waiting for that study deadlocked."""
    row = await _one(
        conn,
        "SELECT object_key FROM ingest.medical_data"
        " WHERE clinic_id = %s AND sha256 = %s AND status NOT IN (%s, %s)"
        f" ORDER BY create_time LIMIT 1{' FOR KEY SHARE' if lock else ''}",
        (clinic_id, sha256, *_DEAD_FILE_STATUSES),
    )
    return None if row is None else str(row["object_key"])


async def insert_file(conn: Connection, values: Row) -> Row | None:
    """A new file row; None when the study already holds these bytes (a concurrent upload
    of the same file won the unique index)."""
    columns = [c.strip() for c in _FILE_COLUMNS.split(",")]
    return await _one(
        conn,
        f"INSERT INTO ingest.medical_data ({_FILE_COLUMNS})"
        f" VALUES ({', '.join(['%s'] * len(columns))})"
        " ON CONFLICT (study_id, sha256) WHERE status NOT IN (1, 7) DO NOTHING"
        f" RETURNING {_FILE_COLUMNS}",
        [values.get(c) for c in columns],
    )


async def update_file(conn: Connection, file_id: uuid.UUID, now: datetime, **changes: Any) -> Row:
    """Set columns of one file (names come from code, never from requests)."""
    assignments = ", ".join(f"{name} = %s" for name in changes)
    row = await _one(
        conn,
        f"UPDATE ingest.medical_data SET {assignments}, update_time = %s WHERE file_id = %s"
        f" RETURNING {_FILE_COLUMNS}",
        [*changes.values(), now, file_id],
    )
    assert row is not None
    return row


async def delete_file(conn: Connection, file_id: uuid.UUID) -> None:
    """Forget a file row (a pending upload that turned out to be a duplicate)."""
    await conn.execute("DELETE FROM ingest.medical_data WHERE file_id = %s", (file_id,))


async def file_statuses(conn: Connection, study_id: uuid.UUID) -> list[Row]:
    """Status and result of each accepted file of the study."""
    return await _all(
        conn,
        "SELECT file_id, status, result_id FROM ingest.medical_data"
        " WHERE study_id = %s AND status NOT IN (%s, %s) ORDER BY create_time, file_id",
        (study_id, *_DEAD_FILE_STATUSES),
    )


async def mark_event_processed(conn: Connection, event_id: str) -> bool:
    """Record an event as applied; False when it was applied before (a redelivery)."""
    row = await _one(
        conn,
        "INSERT INTO ingest.processed_events (event_id) VALUES (%s)"
        " ON CONFLICT DO NOTHING RETURNING event_id",
        (event_id,),
    )
    return row is not None


async def claim_completion(
    conn: Connection, file_id: uuid.UUID, completion_key: str, now: datetime, lease_s: float
) -> Row | None:
    """Record that a CompleteUpload copies the file's staged object to `completion_key`;
    None when the file is no longer pending or another completion holds a live lease. The
    returned row still names the previous (expired) completion_key, if any."""
    return await _one(
        conn,
        "WITH old AS (SELECT file_id, completion_key FROM ingest.medical_data"
        "  WHERE file_id = %s AND status = %s"
        "  AND (completion_started IS NULL OR completion_started < %s - make_interval(secs => %s))"
        "  FOR UPDATE)"
        " UPDATE ingest.medical_data m SET completion_key = %s, completion_started = %s"
        " FROM old WHERE m.file_id = old.file_id"
        " RETURNING old.completion_key AS previous_key",
        (file_id, PENDING_UPLOAD, now, lease_s, completion_key, now),
    )


async def release_completion(conn: Connection, file_id: uuid.UUID, completion_key: str) -> None:
    """Give up a completion's lease (its copy is removed by the caller)."""
    await conn.execute(
        "UPDATE ingest.medical_data SET completion_key = NULL, completion_started = NULL"
        " WHERE file_id = %s AND completion_key = %s",
        (file_id, completion_key),
    )


async def delete_abandoned_uploads(
    conn: Connection, created_before: datetime, lease_before: datetime, limit: int
) -> list[Row]:
    """Delete pending files announced before `created_before` whose completion (if any) has
    not been touched since `lease_before`; returns them. SKIP LOCKED: a file that a
    CompleteUpload is committing right now is left for the next sweep."""
    return await _all(
        conn,
        "DELETE FROM ingest.medical_data WHERE file_id IN ("
        "  SELECT file_id FROM ingest.medical_data"
        "  WHERE status = %s AND create_time < %s"
        "  AND (completion_started IS NULL OR completion_started < %s)"
        "  ORDER BY create_time LIMIT %s FOR UPDATE SKIP LOCKED)"
        " RETURNING file_id, study_id, clinic_id, object_key, completion_key",
        (PENDING_UPLOAD, created_before, lease_before, limit),
    )


async def known_object_keys(conn: Connection, keys: Sequence[str]) -> set[str]:
    """Which of `keys` a file row still needs: as the object of a pending or accepted file
    (a rejected file's object is garbage), or as a completion copy in progress."""
    rows = await _all(
        conn,
        "SELECT object_key AS key FROM ingest.medical_data"
        " WHERE object_key = ANY(%s) AND status <> %s"
        " UNION SELECT completion_key FROM ingest.medical_data WHERE completion_key = ANY(%s)",
        (list(keys), REJECTED, list(keys)),
    )
    return {r["key"] for r in rows}


async def count_study_files(conn: Connection, study_id: uuid.UUID) -> int:
    """Files of the study that count against its quota: accepted and pending ones."""
    row = await _one(
        conn,
        "SELECT count(*) AS n FROM ingest.medical_data WHERE study_id = %s AND status <> %s",
        (study_id, REJECTED),
    )
    return int(row["n"]) if row else 0


async def count_pending_uploads(conn: Connection, clinic_id: str) -> int:
    """The clinic's announced, not yet completed presigned uploads."""
    row = await _one(
        conn,
        "SELECT count(*) AS n FROM ingest.medical_data WHERE clinic_id = %s AND status = %s",
        (clinic_id, PENDING_UPLOAD),
    )
    return int(row["n"]) if row else 0


async def lock_clinic_usage(conn: Connection, clinic_id: str) -> int:
    """Lock the clinic's usage row (created on first use) for this transaction; returns the
    bytes it stores. Every quota check of a clinic holds this lock, so concurrent uploads
    count one after the other."""
    await conn.execute(
        "INSERT INTO ingest.clinic_usage (clinic_id) VALUES (%s) ON CONFLICT DO NOTHING",
        (clinic_id,),
    )
    row = await _one(
        conn,
        "SELECT stored_bytes FROM ingest.clinic_usage WHERE clinic_id = %s FOR UPDATE",
        (clinic_id,),
    )
    assert row is not None
    return int(row["stored_bytes"])


async def stored_bytes(conn: Connection, clinic_id: str) -> int:
    """The bytes the clinic stores (no lock: for an early, advisory check)."""
    row = await _one(
        conn, "SELECT stored_bytes FROM ingest.clinic_usage WHERE clinic_id = %s", (clinic_id,)
    )
    return int(row["stored_bytes"]) if row else 0


async def add_stored_bytes(conn: Connection, clinic_id: str, delta: int) -> None:
    """Count objects stored (+) or removed (-) for the clinic (its row locked or not)."""
    await conn.execute(
        "INSERT INTO ingest.clinic_usage AS u (clinic_id, stored_bytes)"
        " VALUES (%s, GREATEST(%s, 0))"
        " ON CONFLICT (clinic_id) DO UPDATE"
        " SET stored_bytes = GREATEST(u.stored_bytes + %s, 0)",
        (clinic_id, delta, delta),
    )
