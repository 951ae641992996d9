"""The upload sweeper: abandoned presigned uploads expire, and nothing stays in the staging
area that no pending file needs.

Every `MEDMESH_INGEST_SWEEP_INTERVAL_S`:
1. pending files announced more than `PENDING_UPLOAD_MAX_AGE_S` ago (and whose completion, if
   one started, has not been touched for `COMPLETE_LEASE_S`) are deleted, with an audit row
   (`study.file.expire`) each, in one transaction; then their staged object and any
   half-made completion copy are removed. The age must exceed the URL's lifetime plus the
   lease (checked at start-up), so a client that PUT at the URL's last second can complete.
2. every object under `staging/` that no pending file names is removed: a PUT through an old
   URL after CompleteUpload, after a rejection or after the study was deleted, or an object
   whose removal in step 1 failed. (A URL is issued only after its file row committed, so an
   object without a row is never one that is about to get one.)

Several replicas may sweep at once: step 1 takes rows with SKIP LOCKED, and removing an
object twice is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta

import structlog

from medmesh.audit import Actor, record_audit_events
from medmesh.db import Database
from medmesh.errors import DependencyUnavailable
from medmesh.objects import RAW_IMAGES, ObjectStore
from svc_ingest import store
from svc_ingest.config import IngestConfig
from svc_ingest.presigned import STAGING_PREFIX
from svc_ingest.status import now_utc

log = structlog.get_logger(__name__)

SWEEPER_ACTOR = Actor("services/svc_ingest", ("service",))
_BATCH = 500


@dataclass(frozen=True)
class SweepResult:
    """What one sweep removed."""

    expired_files: int
    removed_objects: int


class UploadSweeper:
    """Expires abandoned presigned uploads and empties the staging area (module docstring)."""

    def __init__(self, database: Database, objects: ObjectStore, config: IngestConfig) -> None:
        self._database = database
        self._objects = objects
        self._config = config
        self._task: asyncio.Task[None] | None = None

    async def start(self, stack: AsyncExitStack) -> None:
        """Sweep in the background until `stack` closes."""
        self._task = asyncio.create_task(self._run(), name="ingest-upload-sweeper")
        stack.push_async_callback(self.stop)

    async def stop(self) -> None:
        """Stop the background sweeps."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._config.sweep_interval_s)  # not in the start-up rush
            try:
                result = await self.sweep()
                if result.expired_files or result.removed_objects:
                    log.info(
                        "uploads.swept",
                        expired_files=result.expired_files,
                        removed_objects=result.removed_objects,
                    )
            except Exception as exc:  # noqa: BLE001 - a failed sweep is retried next time
                log.warning("uploads.sweep_failed", error=str(exc))

    async def sweep(self) -> SweepResult:
        """One sweep: both steps of the module docstring."""
        expired = 0
        removed = 0
        while True:
            files, objects = await self._expire_batch()
            expired += files
            removed += objects
            if files < _BATCH:
                break
        removed += await self._empty_staging()
        return SweepResult(expired, removed)

    async def _expire_batch(self) -> tuple[int, int]:
        now = now_utc()
        created_before = now - timedelta(seconds=self._config.pending_upload_max_age_s)
        lease_before = now - timedelta(seconds=self._config.complete_lease_s)
        async with self._database.transaction() as conn:
            rows = await store.delete_abandoned_uploads(conn, created_before, lease_before, _BATCH)
            await record_audit_events(
                conn,
                SWEEPER_ACTOR,
                "study.file.expire",
                [
                    (
                        r["clinic_id"],
                        f"studies/{r['study_id']}",
                        str(r["study_id"]),
                        {"file_id": str(r["file_id"])},
                    )
                    for r in rows
                ],
            )
        keys = [k for r in rows for k in (r["object_key"], r["completion_key"]) if k]
        return len(rows), await self._remove(keys)

    async def _empty_staging(self) -> int:
        keys = await self._objects.list_keys(RAW_IMAGES, STAGING_PREFIX)
        unneeded: list[str] = []
        for start in range(0, len(keys), _BATCH):
            batch = keys[start : start + _BATCH]
            # The primary, never a replica: a pending row it has not seen yet is still needed.
            async with self._database.transaction() as conn:
                needed = await store.known_object_keys(conn, batch)
            unneeded += [k for k in batch if k not in needed]
        return await self._remove(unneeded)

    async def _remove(self, keys: list[str]) -> int:
        removed = 0
        for key in keys:
            try:
                await self._objects.remove(RAW_IMAGES, key)
            except DependencyUnavailable as exc:
                log.warning("uploads.sweep_remove_failed", key=key, error=str(exc))
            else:
                removed += 1
        return removed
