"""Lock order in svc_ingest: every transaction locks studies before files, so the outbox
relay and an upload never wait for each other in a cycle. Under load (bench_load.py, the same
note text in many studies of one clinic) the relay's hook locked study A, then A's file, then
waited for study B, while a CreateTextNote in study B held B and waited for A's file
(`find_clinic_object_by_sha`, the clinic's copy of the same bytes): PostgreSQL aborted one as
a deadlock victim and the note answered INTERNAL.

The test holds the two real transactions at the point where they met: the upload's
transaction holds its study's lock (as `open_study` takes it) while the relay's hook runs a
batch with jobs of both studies; then the upload looks for the clinic's copy of its bytes."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
from psycopg.rows import dict_row

from gen.medmesh.ingest.v1 import CreateTextNoteRequest, FileStatus, Study
from medmesh.outbox import Outbox, OutboxMessage
from svc_ingest import store
from svc_ingest.status import StudyEvents

from .conftest import Ingest

NOTE = "Patient reports mild chest pain since Tuesday."


async def _note(ingest: Ingest, study: Study, text: str) -> uuid.UUID:
    response = await ingest.stub.create_text_note(
        CreateTextNoteRequest(parent=study.name, text=text, file_name="note.txt"),
        metadata=ingest.auth(),
    )
    return uuid.UUID(response.file.name.rsplit("/", 1)[-1])


def _job_message(ingest: Ingest, file_id: uuid.UUID) -> OutboxMessage:
    """The inference job svc_ingest wrote to its outbox for `file_id`, as the relay reads it."""
    ((row_id, subject, payload),) = ingest.rows(
        "SELECT o.id, o.subject, o.payload FROM ingest.outbox o"
        " JOIN ingest.medical_data m ON m.job_id = o.id WHERE m.file_id = %s",
        file_id,
    )
    return OutboxMessage(str(row_id), subject, bytes(payload), {})


async def _waiting_for_a_lock(conn: psycopg.AsyncConnection, pid: int) -> None:
    while True:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", (pid,)
        )
        row = await cur.fetchone()
        if row and row[0]:
            return
        await asyncio.sleep(0.02)


async def test_the_relay_and_an_upload_sharing_bytes_with_another_study_do_not_deadlock(
    ingest: Ingest,
) -> None:
    study_a = await ingest.create_study(patient_ref="p-a")
    study_b = await ingest.create_study(patient_ref="p-b")
    file_a = await _note(ingest, study_a, NOTE)
    file_b = await _note(ingest, study_b, "A different note in study B.")
    b_id = uuid.UUID(study_b.name.rsplit("/", 1)[-1])
    ((sha_a, key_a),) = ingest.rows(
        "SELECT sha256, object_key FROM ingest.medical_data WHERE file_id = %s", file_a
    )
    # A's job first in the batch, as when A's note was committed first.
    batch = [_job_message(ingest, file_a), _job_message(ingest, file_b)]
    events = StudyEvents(Outbox("ingest"), ingest.topology)
    url = ingest.database_url

    async with (
        await psycopg.AsyncConnection.connect(url, row_factory=dict_row) as upload,
        await psycopg.AsyncConnection.connect(url, row_factory=dict_row) as relay,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as observer,
    ):
        async with upload.transaction():
            assert await store.lock_study_by_id(upload, b_id) is not None  # open_study's lock

            async def relay_batch() -> None:
                async with relay.transaction():
                    await events.on_jobs_published(relay, batch)

            relay_task = asyncio.create_task(relay_batch())
            await asyncio.wait_for(_waiting_for_a_lock(observer, relay.info.backend_pid), 30)
            # The relay now waits for study B, which the upload holds.
            shared = await asyncio.wait_for(
                store.find_clinic_object_by_sha(upload, "clinic-a", sha_a), 30
            )
            assert shared == key_a
        await asyncio.wait_for(relay_task, 30)  # no DeadlockDetected on either side

    # Both files moved to QUEUED (by this batch or the service's own relay before it).
    statuses = ingest.rows(
        "SELECT status FROM ingest.medical_data WHERE file_id IN (%s, %s)", file_a, file_b
    )
    assert sorted(s for (s,) in statuses) == [int(FileStatus.QUEUED)] * 2


async def _lock_wait_on(conn: psycopg.AsyncConnection, fragment: str) -> None:
    """Until a backend waits for a lock while running a statement containing `fragment`."""
    while True:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query LIKE %s AND pid <> pg_backend_pid()",
            (f"%{fragment}%",),
        )
        row = await cur.fetchone()
        if row and row[0]:
            return
        await asyncio.sleep(0.02)


async def test_a_note_whose_transaction_is_a_deadlock_victim_is_retried_and_stored_once(
    ingest: Ingest,
) -> None:
    """The backstop: if a deadlock still happens (here: another transaction takes the
    clinic's usage row, then the study, the other way round), PostgreSQL aborts the note's
    transaction and svc_ingest runs it again instead of answering INTERNAL."""
    study = await ingest.create_study()
    study_id = uuid.UUID(study.name.rsplit("/", 1)[-1])
    ingest.rows(
        "INSERT INTO ingest.clinic_usage (clinic_id) VALUES ('clinic-a')"
        " ON CONFLICT DO NOTHING RETURNING clinic_id"
    )
    async with (
        await psycopg.AsyncConnection.connect(ingest.database_url) as other,
        await psycopg.AsyncConnection.connect(ingest.database_url, autocommit=True) as observer,
    ):
        async with other.transaction():
            # Ours is never the one PostgreSQL picks: the note's backend checks first.
            await other.execute("SET LOCAL deadlock_timeout = '60s'")
            await other.execute(
                "SELECT 1 FROM ingest.clinic_usage WHERE clinic_id = 'clinic-a' FOR UPDATE"
            )
            note = asyncio.create_task(_note(ingest, study, "A note no other file shares."))
            # The note's transaction holds the study and waits for the usage row ...
            await asyncio.wait_for(_lock_wait_on(observer, "clinic_usage"), 30)
            # ... and now we wait for the study: a cycle, the note's transaction is aborted.
            await other.execute(
                "SELECT 1 FROM ingest.studies WHERE study_id = %s FOR UPDATE", (study_id,)
            )
        file_id = await asyncio.wait_for(note, 30)

    rows = ingest.rows("SELECT file_id FROM ingest.medical_data WHERE study_id = %s", study_id)
    assert rows == [(file_id,)]
    jobs = ingest.rows(
        "SELECT count(*) FROM ingest.outbox o JOIN ingest.medical_data m ON m.job_id = o.id"
        " WHERE m.study_id = %s",
        study_id,
    )
    assert jobs == [(1,)]
