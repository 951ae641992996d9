"""medmesh.outbox against real PostgreSQL and JetStream: what commits is published in order
with Msg-Id = row id, what rolls back is not, and a re-sent row is not duplicated."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

import svc_ingest
from gen.medmesh.events.v1 import InferenceJob
from medmesh.db import Database
from medmesh.jetstream import MSG_ID_HEADER, Topology, connect_nats, ensure_topology
from medmesh.migrate import service_migrations
from medmesh.migrations import apply_migrations
from medmesh.outbox import OUTBOX_TABLE_SQL, Outbox, OutboxRelay, RelayOptions


@dataclass
class Harness:
    database: Database
    js: object
    topology: Topology
    outbox: Outbox
    stack: AsyncExitStack
    database_url: str

    async def start_relay(self, options: RelayOptions | None = None) -> OutboxRelay:
        """The relay of this harness's outbox, listening for its NOTIFY."""
        return await OutboxRelay.start(
            self.outbox,
            self.database,
            self.js,  # type: ignore[arg-type]
            self.stack,
            listen_url=self.database_url,
            options=options,
        )

    async def stream(self) -> list[tuple[str, InferenceJob]]:
        info = await self.js.stream_info(self.topology.jobs_stream)  # type: ignore[attr-defined]
        found: list[tuple[str, InferenceJob]] = []
        if not info.state.messages:
            return found
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await self.js.get_msg(self.topology.jobs_stream, seq)  # type: ignore[attr-defined]
            found.append((msg.headers[MSG_ID_HEADER], InferenceJob.FromString(msg.data)))
        return found


@pytest.fixture
async def harness(database_url: str, nats_url: str, name_prefix: str) -> AsyncIterator[Harness]:
    """The ingest schema (with its outbox table) and the test's JetStream topology."""
    for migrations in service_migrations("ingest"):
        apply_migrations(
            database_url, schema=migrations.schema, migrations_dir=migrations.directory
        )
    topology = Topology(subject_root=name_prefix, stream_prefix=name_prefix.upper())
    async with AsyncExitStack() as stack:
        database = await stack.enter_async_context(Database(database_url))
        nc, js = await connect_nats(nats_url, name="outbox-test")
        stack.push_async_callback(nc.close)
        await ensure_topology(js, topology)
        yield Harness(database, js, topology, Outbox("ingest"), stack, database_url)


def job(n: int) -> InferenceJob:
    return InferenceJob(job_id=str(uuid.uuid4()), file_id=f"file-{n}", clinic_id="c")


async def test_committed_rows_are_published_in_order_with_their_id_as_msg_id(
    harness: Harness,
) -> None:
    ids = []
    async with harness.database.transaction() as conn:
        for n in range(5):
            ids.append(
                await harness.outbox.enqueue(conn, harness.topology.infer_image_subject, job(n))
            )
    relay = await harness.start_relay()
    for _ in range(100):
        if relay.published_total == 5:
            break
        await asyncio.sleep(0.05)
    published = await harness.stream()
    assert [msg_id for msg_id, _ in published] == ids
    assert [j.file_id for _, j in published] == [f"file-{n}" for n in range(5)]
    async with harness.database.read_connection() as conn:
        assert await harness.outbox.pending_count(conn) == 0


async def test_messages_enqueued_together_are_published_in_the_order_given(
    harness: Harness,
) -> None:
    chosen = uuid.uuid4()
    subject = harness.topology.infer_image_subject
    async with harness.database.transaction() as conn:
        ids = await harness.outbox.enqueue_many(
            conn,
            [(subject, job(n), chosen if n == 2 else None, {"x-n": str(n)}) for n in range(6)],
        )
    assert ids[2] == str(chosen)
    assert len(set(ids)) == 6
    await harness.start_relay()
    for _ in range(100):
        if len(published := await harness.stream()) == 6:
            break
        await asyncio.sleep(0.05)
    assert [msg_id for msg_id, _ in published] == ids
    assert [j.file_id for _, j in published] == [f"file-{n}" for n in range(6)]


async def test_a_notify_wakes_the_relay_long_before_its_poll_interval(harness: Harness) -> None:
    relay = await harness.start_relay(RelayOptions(poll_interval_s=60))
    await asyncio.sleep(0.3)  # the listener is up
    async with harness.database.transaction() as conn:
        await harness.outbox.enqueue(conn, harness.topology.infer_text_subject, job(1))
    for _ in range(100):
        if relay.published_total == 1:
            break
        await asyncio.sleep(0.05)
    assert relay.published_total == 1


async def test_a_rolled_back_row_is_never_published(harness: Harness) -> None:
    async def failing_change() -> None:
        async with harness.database.transaction() as conn:
            await harness.outbox.enqueue(conn, harness.topology.infer_image_subject, job(1))
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await failing_change()
    relay = OutboxRelay(harness.outbox, harness.database, harness.js)  # type: ignore[arg-type]
    assert await relay.publish_pending() == 0
    assert await harness.stream() == []


async def test_a_row_sent_again_after_a_crash_is_not_duplicated_on_the_stream(
    harness: Harness,
) -> None:
    async with harness.database.transaction() as conn:
        row_id = await harness.outbox.enqueue(conn, harness.topology.infer_image_subject, job(1))
    relay = OutboxRelay(harness.outbox, harness.database, harness.js)  # type: ignore[arg-type]
    assert await relay.publish_pending() == 1
    # The relay crashed before its commit: the row looks unpublished again.
    async with harness.database.transaction() as conn:
        await conn.execute("UPDATE ingest.outbox SET published_at = NULL")
    assert await relay.publish_pending() == 1
    assert [msg_id for msg_id, _ in await harness.stream()] == [row_id]


def test_the_documented_table_is_the_one_ingest_migrates() -> None:
    migration = (Path(svc_ingest.__file__).parent / "migrations" / "0003.outbox.sql").read_text()
    body = "\n".join(x for x in migration.splitlines() if not x.startswith("--")).strip()
    assert body == OUTBOX_TABLE_SQL.strip()
