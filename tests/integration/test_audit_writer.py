"""The batched read-audit writer (`medmesh.audit_writer.AuditWriter`) against a real
PostgreSQL: every accepted row ends up in `audit.events` (after a burst, after a graceful
stop, when its queue is full, after PostgreSQL refused a batch), or, if PostgreSQL stays
unreachable through shutdown, in the error log with its full content; never dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from medmesh.audit_writer import AuditRow, AuditWriter
from medmesh.db import Database
from medmesh.identity import Identity
from medmesh.migrations import apply_audit_migrations

READER = Identity("u-reader", "clinic-a", frozenset({"viewer", "clinician"}))


@pytest.fixture
async def bare_db(database_url: str) -> AsyncIterator[Database]:
    """An open Database on a fresh database with no audit schema yet."""
    db = Database(database_url, max_size=4)
    await db.open()
    yield db
    await db.close()


@pytest.fixture
async def audit_db(database_url: str, bare_db: Database) -> Database:
    """The same database with the audit schema migrated."""
    apply_audit_migrations(database_url)
    return bare_db


async def _resources(db: Database) -> list[str]:
    async with db.read_connection() as conn:
        rows = await (
            await conn.execute("SELECT resource FROM audit.events ORDER BY id")
        ).fetchall()
    return [r["resource"] for r in rows]


def _name(i: int) -> str:
    return f"studies/s-{i}/results/r-{i}"


async def test_a_burst_of_concurrent_reads_leaves_every_row_in_few_batches(
    audit_db: Database,
) -> None:
    writer = AuditWriter(audit_db)
    writer.start()

    await asyncio.gather(
        *(
            writer.record_access(READER, "result.read", _name(i), study_id=f"s-{i}")
            for i in range(2000)
        )
    )
    await writer.flush()

    assert sorted(await _resources(audit_db)) == sorted(_name(i) for i in range(2000))
    assert writer.synchronous_writes == 0
    assert writer.batches < 2000
    async with audit_db.read_connection() as conn:
        row = await (
            await conn.execute(
                "SELECT clinic_id, actor_user_id, actor_roles, action, study_id, detail"
                " FROM audit.events WHERE resource = %s",
                (_name(7),),
            )
        ).fetchone()
    assert row == {
        "clinic_id": "clinic-a",
        "actor_user_id": "u-reader",
        "actor_roles": ["clinician", "viewer"],
        "action": "result.read",
        "study_id": "s-7",
        "detail": {},
    }
    await writer.close()


async def test_reads_arriving_one_by_one_share_a_batch_within_the_linger(
    audit_db: Database,
) -> None:
    # Reads 10 ms apart, as a client calling in sequence: without a linger each one woke the
    # writer for its own INSERT + commit (one transaction per read on the reads' event loop).
    writer = AuditWriter(audit_db, linger_s=2.0)
    writer.start()
    for i in range(10):
        await writer.record_access(READER, "result.read", _name(i))
        await asyncio.sleep(0.01)
    await writer.flush()

    assert sorted(await _resources(audit_db)) == sorted(_name(i) for i in range(10))
    assert writer.batches <= 2  # 1 unless the machine stalled for the whole 2 s linger
    await writer.close()


async def test_a_graceful_stop_writes_everything_still_queued(audit_db: Database) -> None:
    writer = AuditWriter(audit_db)
    writer.start()
    for i in range(300):
        await writer.record_access(READER, "result.list", _name(i), detail={"returned": i})

    await writer.close()

    assert sorted(await _resources(audit_db)) == sorted(_name(i) for i in range(300))
    await writer.record_access(READER, "result.read", "after-stop")  # written synchronously
    assert (await _resources(audit_db))[-1] == "after-stop"
    assert writer.synchronous_writes == 1


async def test_when_the_queue_is_full_the_row_is_written_synchronously_and_none_is_dropped(
    audit_db: Database,
) -> None:
    writer = AuditWriter(audit_db, max_queue=3)
    writer.start()

    # The first three fill the queue without yielding to the writer task; the fourth finds it
    # full and is written on the caller's path.
    for i in range(10):
        await writer.record(AuditRow("clinic-a", "u-reader", ["viewer"], "result.read", _name(i)))
    await writer.flush()

    assert writer.synchronous_writes >= 1
    assert sorted(await _resources(audit_db)) == sorted(_name(i) for i in range(10))
    await writer.close()


async def test_a_batch_that_postgresql_refuses_is_kept_and_retried_until_it_commits(
    database_url: str, bare_db: Database
) -> None:
    writer = AuditWriter(bare_db, retry_pause_s=0.05)
    writer.start()
    for i in range(5):
        await writer.record_access(READER, "result.read", _name(i))
    await asyncio.sleep(0.3)  # several failed attempts: audit.events does not exist yet
    assert writer.pending == 5

    await asyncio.to_thread(apply_audit_migrations, database_url)
    await asyncio.wait_for(writer.flush(), 10)

    assert sorted(await _resources(bare_db)) == sorted(_name(i) for i in range(5))
    await writer.close()


async def test_rows_that_cannot_be_written_by_shutdown_are_logged_with_their_content(
    bare_db: Database,
) -> None:
    writer = AuditWriter(bare_db, retry_pause_s=0.05, close_timeout_s=0.3)
    writer.start()
    await writer.record_access(READER, "result.read", _name(1), study_id="s-1")
    await writer.record_access(READER, "result.list", _name(2), detail={"returned": 3})

    with capture_logs() as logs:
        await writer.close()

    lost = [e for e in logs if e["log_level"] == "error"]
    assert [(e["action"], e["resource"], e["clinic_id"], e["actor_user_id"]) for e in lost] == [
        ("result.read", _name(1), "clinic-a", "u-reader"),
        ("result.list", _name(2), "clinic-a", "u-reader"),
    ]
    assert lost[1]["detail"] == {"returned": 3}
    assert writer.pending == 0
