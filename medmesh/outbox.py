"""The transactional outbox: messages for JetStream written in the same PostgreSQL transaction
as the change they announce, and a relay that publishes them afterwards.

Why: publishing to NATS inside a database transaction is either lost (commit after a publish
that failed) or a lie (publish before a commit that then fails). Writing the message as a row
of the same transaction makes "the change happened" and "the message will be sent" one fact;
the relay turns rows into JetStream messages with `Nats-Msg-Id` = the row's id, so a relay that
crashes between publishing and marking a row published re-sends it and JetStream drops the
duplicate (within the stream's duplicate window). A NATS outage delays messages, never loses
them.

Each service keeps its own table in its own schema. Put this in a migration of the service
(`svc_<name>/migrations/000N.outbox.sql`; `OUTBOX_TABLE_SQL` below is the same text):

    CREATE TABLE outbox (
        id           uuid        PRIMARY KEY,
        seq          bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
        subject      text        NOT NULL,
        payload      bytea       NOT NULL,
        headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
        created_at   timestamptz NOT NULL DEFAULT now(),
        published_at timestamptz
    );
    CREATE INDEX outbox_pending_idx ON outbox (seq) WHERE published_at IS NULL;

Usage:

    outbox = Outbox("ingest")
    async with database.transaction() as conn:
        ...  # the change
        await outbox.enqueue(conn, topology.infer_image_subject, job)
    relay = await OutboxRelay.start(outbox, database, jetstream.js, stack,
                                    listen_url=settings.postgres_url)

Order: rows are published in `seq` order, one relay at a time per schema (a transaction-level
advisory lock; other replicas' relays wait), so messages written by one transaction keep their
order. Rows of concurrent transactions are ordered by when they were inserted, not committed;
consumers must not rely on an order across unrelated aggregates.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import psycopg
import structlog
from nats.js import JetStreamContext
from opentelemetry import context as otel_context
from opentelemetry import propagate
from psycopg import sql
from psycopg.types.json import Jsonb

from medmesh.db import Connection, Database
from medmesh.jetstream import ProtoMessage, RawPayload, publish_message

log = structlog.get_logger(__name__)

OUTBOX_TABLE_SQL = """
CREATE TABLE outbox (
    id           uuid        PRIMARY KEY,
    seq          bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    subject      text        NOT NULL,
    payload      bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_pending_idx ON outbox (seq) WHERE published_at IS NULL;
"""


OutboxEntry = tuple[str, ProtoMessage | bytes, uuid.UUID | None, dict[str, str] | None]
"""A message to enqueue: (subject, message, Msg-Id or None for a new one, headers or None)."""


@dataclass(frozen=True)
class OutboxMessage:
    """One row of the outbox as the relay reads it."""

    id: str
    subject: str
    payload: bytes
    headers: dict[str, str]


PublishedHook = Callable[[Connection, Sequence[OutboxMessage]], Awaitable[None]]
"""Called by the relay inside its transaction with the rows it just published, before they
are marked published: a service can record "this job is on the queue now" atomically with it.
An exception rolls the transaction back; the rows are sent again (and de-duplicated)."""


@dataclass(frozen=True)
class Outbox:
    """The outbox table of one service schema (`<schema>.outbox`)."""

    schema: str
    table: str = "outbox"

    @property
    def qualified(self) -> sql.Composable:
        """`"<schema>"."outbox"`: service pools do not set search_path, so names are qualified."""
        return sql.Identifier(self.schema, self.table)

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel that wakes this schema's relay."""
        return f"medmesh_outbox_{self.schema}"

    @property
    def lock_key(self) -> int:
        """Advisory lock key: one relay of this schema publishes at a time, keeping order."""
        digest = hashlib.sha256(f"medmesh.outbox.{self.schema}.{self.table}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    async def enqueue(
        self,
        conn: Connection,
        subject: str,
        message: ProtoMessage | bytes,
        *,
        msg_id: uuid.UUID | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Insert one message in the caller's transaction and return its id (the Msg-Id).

        The current trace context is stored with it, so the consumer's span joins the trace of
        the request that caused the message even though the relay publishes it later. The
        NOTIFY is delivered on commit only, so the relay never wakes for a rolled-back row.
        """
        (row_id,) = await self.enqueue_many(conn, [(subject, message, msg_id, headers)])
        return row_id

    async def enqueue_many(
        self,
        conn: Connection,
        messages: Sequence[OutboxEntry],
    ) -> list[str]:
        """`enqueue` for several (subject, message, msg_id, headers) at once: one INSERT and
        one NOTIFY whatever their number. Their ids, in order."""
        if not messages:
            return []
        ids, subjects, payloads, all_headers = [], [], [], []
        for subject, message, msg_id, headers in messages:
            carried = dict(headers or {})
            if "traceparent" not in carried:  # a caller may name the parent (a batch's job)
                propagate.inject(carried)
            ids.append(msg_id or uuid.uuid4())
            subjects.append(subject)
            payloads.append(message if isinstance(message, bytes) else bytes(message))
            all_headers.append(Jsonb(carried))
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, subject, payload, headers)"
                " SELECT id, subject, payload, headers"
                " FROM unnest(%s::uuid[], %s::text[], %s::bytea[], %s::jsonb[])"
                " WITH ORDINALITY AS m (id, subject, payload, headers, position)"
                " ORDER BY position"
            ).format(self.qualified),
            (ids, subjects, payloads, all_headers),
        )
        await conn.execute("SELECT pg_notify(%s, '')", (self.channel,))
        return [str(row_id) for row_id in ids]

    async def pending_count(self, conn: Connection) -> int:
        """How many messages wait for the relay (for metrics and tests)."""
        cur = await conn.execute(
            sql.SQL("SELECT count(*) AS n FROM {} WHERE published_at IS NULL").format(
                self.qualified
            )
        )
        row = await cur.fetchone()
        return int(row["n"]) if row else 0


@dataclass
class RelayOptions:
    """Tuning of the relay; the defaults suit a service that publishes tens of messages/s."""

    batch_size: int = 100
    poll_interval_s: float = 1.0
    """Fallback wake-up when no NOTIFY arrives (a lost listen connection, another replica)."""
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    retention_s: float = 24 * 3600.0
    """Published rows are kept this long (debugging), then pruned."""


@dataclass
class OutboxRelay:
    """Publishes pending outbox rows in order until stopped; see the module docstring."""

    outbox: Outbox
    database: Database
    js: JetStreamContext
    listen_url: str | None = None
    on_published: PublishedHook | None = None
    options: RelayOptions = field(default_factory=RelayOptions)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    published_total: int = field(default=0, init=False)

    @classmethod
    async def start(
        cls,
        outbox: Outbox,
        database: Database,
        js: JetStreamContext,
        stack: AsyncExitStack,
        *,
        listen_url: str | None = None,
        on_published: PublishedHook | None = None,
        options: RelayOptions | None = None,
    ) -> OutboxRelay:
        """Start the relay (and its LISTEN connection) as background tasks stopped by `stack`.

        Enter it after the database and JetStream so that it stops before they close.
        """
        relay = cls(outbox, database, js, listen_url, on_published, options or RelayOptions())
        relay._tasks.append(asyncio.create_task(relay._run(), name=f"outbox-relay-{outbox.schema}"))
        if listen_url:
            relay._tasks.append(
                asyncio.create_task(
                    relay._listen(listen_url), name=f"outbox-listen-{outbox.schema}"
                )
            )
        stack.push_async_callback(relay.stop)
        return relay

    def wake(self) -> None:
        """Publish now rather than at the next poll (the NOTIFY listener calls it)."""
        self._wake.set()

    async def stop(self) -> None:
        """Cancel the background tasks; unpublished rows stay for the next start."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            # Again until it ends: a cancellation can get lost in a library call under the
            # relay, which then polled on and shutdown hung (seen in the ingest tests).
            while not (await asyncio.wait({task}, timeout=1.0))[0]:
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _run(self) -> None:
        backoff = self.options.backoff_initial_s
        pruned_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            try:
                published = await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a relay must survive any outage
                log.warning("outbox.publish_failed", schema=self.outbox.schema, error=str(exc))
                # Jitter keeps replicas from retrying in lockstep after an outage.
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))  # noqa: S311
                backoff = min(backoff * 2, self.options.backoff_max_s)
                continue
            backoff = self.options.backoff_initial_s
            if published >= self.options.batch_size:
                continue  # more are waiting
            if loop.time() - pruned_at > 60:
                pruned_at = loop.time()
                await self._prune()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.poll_interval_s):
                    await self._wake.wait()

    async def publish_pending(self) -> int:
        """Publish one batch of pending rows in order; returns how many were published.

        Rows published before a failure are marked published (in the same commit) and the
        failure is raised afterwards, so a half-sent batch is never sent twice by us.
        """
        failure: Exception | None = None
        published: list[OutboxMessage] = []
        async with self.database.transaction() as conn:
            cur = await conn.execute(
                "SELECT pg_try_advisory_xact_lock(%s) AS locked", (self.outbox.lock_key,)
            )
            row = await cur.fetchone()
            if not row or not row["locked"]:
                return 0  # another replica's relay is publishing
            cur = await conn.execute(
                sql.SQL(
                    "SELECT id, subject, payload, headers FROM {} WHERE published_at IS NULL "
                    "ORDER BY seq LIMIT %s"
                ).format(self.outbox.qualified),
                (self.options.batch_size,),
            )
            rows = [
                OutboxMessage(str(r["id"]), r["subject"], bytes(r["payload"]), dict(r["headers"]))
                for r in await cur.fetchall()
            ]
            for message in rows:
                try:
                    await self._publish(message)
                except Exception as exc:  # noqa: BLE001 - re-raised after the commit below
                    failure = exc
                    break
                published.append(message)
            if published:
                if self.on_published is not None:
                    await self.on_published(conn, published)
                await conn.execute(
                    sql.SQL("UPDATE {} SET published_at = now() WHERE id = ANY(%s)").format(
                        self.outbox.qualified
                    ),
                    ([uuid.UUID(m.id) for m in published],),
                )
        self.published_total += len(published)
        if failure is not None:
            raise failure
        return len(published)

    async def _publish(self, message: OutboxMessage) -> None:
        # The producer span becomes a child of the request that wrote the row.
        token = otel_context.attach(propagate.extract(message.headers))
        try:
            headers = {
                k: v for k, v in message.headers.items() if k not in {"traceparent", "tracestate"}
            }
            await publish_message(
                self.js,
                message.subject,
                RawPayload(message.payload),
                msg_id=message.id,
                headers=headers,
            )
        finally:
            otel_context.detach(token)

    async def _prune(self) -> None:
        try:
            async with self.database.transaction() as conn:
                await conn.execute(
                    sql.SQL(
                        "DELETE FROM {} WHERE published_at < now() - make_interval(secs => %s)"
                    ).format(self.outbox.qualified),
                    (self.options.retention_s,),
                )
        except Exception as exc:  # noqa: BLE001 - pruning is housekeeping; retry next time
            log.warning("outbox.prune_failed", schema=self.outbox.schema, error=str(exc))

    async def _listen(self, url: str) -> None:
        """Wake the relay on every committed enqueue; reconnect with backoff when dropped."""
        backoff = self.options.backoff_initial_s
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    url, autocommit=True, application_name=f"outbox-{self.outbox.schema}"
                )
                async with conn:
                    await conn.execute(
                        sql.SQL("LISTEN {}").format(sql.Identifier(self.outbox.channel))
                    )
                    backoff = self.options.backoff_initial_s
                    self.wake()  # rows committed while we were not listening
                    async for _ in conn.notifies():
                        self.wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - polling covers us while we reconnect
                log.warning("outbox.listen_failed", schema=self.outbox.schema, error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.options.backoff_max_s)
