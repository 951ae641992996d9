"""Read audits written in the background, in batches, without dropping any.

A cached read (GetResult from Redis) takes well under a millisecond; one durable PostgreSQL
commit for its `result.read` row takes several, and was most of the call. `AuditWriter`
takes the row off the read's path:

* `record` puts the row on a bounded in-memory queue and returns; a single writer task
  waits `linger_s` (5 ms) after a batch's first row for more, then takes everything queued
  (up to `max_batch` rows) and INSERTs it in one transaction with a normal, synchronous
  commit (group commit: one WAL flush for the whole batch). A row is committed at most
  linger + one commit-time after the read answered (a few ms), never later than the batch in
  front of it.
* When the queue is full (PostgreSQL slow or down), or the writer is stopped, `record`
  writes the row itself, synchronously, before the read answers: a read that cannot be
  audited fails (UNAVAILABLE), it is never answered unaudited. Nothing is dropped.
* A batch that fails to commit stays in hand and is retried (with a pause) until it
  commits; meanwhile the queue fills and readers fall back to the synchronous write.
* `close` (graceful stop, after the gRPC server has drained) writes everything still
  queued. If PostgreSQL stays unreachable past `close_timeout_s`, each unwritten row is
  logged at ERROR with its full content (the log is shipped): never silently.

The trade-off, stated plainly: a crash of the service process (kill -9, OOM, power) loses
the rows that were queued or in the uncommitted batch at that instant: the reads answered
in roughly the last commit time (milliseconds; at most `max_queue` rows). A crash of
PostgreSQL loses nothing that was committed (commits stay synchronous).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from psycopg.types.json import Jsonb

from medmesh.db import Database
from medmesh.identity import Identity

_log = structlog.get_logger(__name__)

_INSERT = """
INSERT INTO audit.events
    (clinic_id, actor_user_id, actor_roles, action, resource, study_id, detail)
VALUES (%s, %s, %s, %s, %s, %s, %s)
"""


@dataclass(frozen=True)
class AuditRow:
    """One `audit.events` row waiting to be written."""

    clinic_id: str
    actor_user_id: str
    actor_roles: Sequence[str]
    action: str
    resource: str
    study_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def params(self) -> tuple[Any, ...]:
        """The INSERT's parameters."""
        return (
            self.clinic_id,
            self.actor_user_id,
            list(self.actor_roles),
            self.action,
            self.resource,
            self.study_id,
            Jsonb(dict(self.detail)),
        )


async def insert_rows(database: Database, rows: Sequence[AuditRow]) -> None:
    """All `rows` in one transaction (one commit); raises if it does not commit."""
    async with database.transaction() as conn, conn.cursor() as cur:
        await cur.executemany(_INSERT, [row.params() for row in rows])


class AuditWriter:
    """The batched, never-dropping writer of read audits (see the module doc)."""

    def __init__(
        self,
        database: Database,
        *,
        max_queue: int = 10_000,
        max_batch: int = 500,
        retry_pause_s: float = 0.5,
        close_timeout_s: float = 10.0,
        linger_s: float = 0.005,
    ) -> None:
        self._database = database
        # After the first row of a batch, wait this long for more: at a read every ms or so,
        # one INSERT + commit per ~5 rows instead of one per row (the writer shares the event
        # loop with the reads, so its work per row is what the reads' p99 feels).
        self._linger_s = linger_s
        self._queue: asyncio.Queue[AuditRow] = asyncio.Queue(maxsize=max_queue)
        self._max_batch = max_batch
        self._retry_pause_s = retry_pause_s
        self._close_timeout_s = close_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._in_hand: list[AuditRow] = []
        self.synchronous_writes = 0
        """Rows written on the caller's path (queue full or writer stopped)."""
        self.batches = 0
        """Batches committed by the writer task."""

    def start(self) -> None:
        """Start the writer task (in the running event loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    @property
    def pending(self) -> int:
        """Rows accepted but not committed yet."""
        return self._queue.qsize() + len(self._in_hand)

    async def record_access(
        self,
        identity: Identity,
        action: str,
        resource: str,
        *,
        study_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Audit one read by `identity` (same row as `medmesh.audit.record_access`)."""
        await self.record(
            AuditRow(
                identity.clinic_id,
                identity.user_id,
                sorted(identity.roles),
                action,
                resource,
                study_id,
                dict(detail or {}),
            )
        )

    async def record(self, row: AuditRow) -> None:
        """Queue `row`; when the queue is full or the writer is not running, write it now."""
        if self._task is not None and not self._task.done():
            try:
                self._queue.put_nowait(row)
            except asyncio.QueueFull:
                pass
            else:
                return
        self.synchronous_writes += 1
        await insert_rows(self._database, [row])

    async def flush(self) -> None:
        """Wait until every row accepted so far is committed (tests, shutdown)."""
        await self._queue.join()

    async def close(self) -> None:
        """Stop accepting (later rows are written synchronously), write what is queued, stop
        the task. Rows that cannot be written within `close_timeout_s` are logged."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), self._close_timeout_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        lost = list(self._in_hand)
        while not self._queue.empty():
            lost.append(self._queue.get_nowait())
            self._queue.task_done()
        self._in_hand = []
        for row in lost:
            _log.error(
                "audit row not written: PostgreSQL unreachable at shutdown",
                clinic_id=row.clinic_id,
                actor_user_id=row.actor_user_id,
                actor_roles=list(row.actor_roles),
                action=row.action,
                resource=row.resource,
                study_id=row.study_id,
                detail=dict(row.detail),
            )

    async def _run(self) -> None:
        while True:
            self._in_hand = [await self._queue.get()]
            if self._linger_s > 0 and self._queue.qsize() < self._max_batch - 1:
                await asyncio.sleep(self._linger_s)
            while len(self._in_hand) < self._max_batch and not self._queue.empty():
                self._in_hand.append(self._queue.get_nowait())
            await self._write_until_committed()
            done, self._in_hand = len(self._in_hand), []
            for _ in range(done):
                self._queue.task_done()

    async def _write_until_committed(self) -> None:
        while True:
            try:
                await insert_rows(self._database, self._in_hand)
            except Exception as exc:  # noqa: BLE001 - keep the rows and retry; never drop
                _log.warning(
                    "audit batch not committed, retrying",
                    rows=len(self._in_hand),
                    error=str(exc),
                )
                await asyncio.sleep(self._retry_pause_s)
            else:
                self.batches += 1
                return
