"""Getting files into a study: streamed uploads and clinical notes (presigned uploads are in
presigned.py and commit through `accept_stored_object`).

The order of an upload is what makes "nothing is left behind" true:
1. the declaration is checked and the study looked up (nothing written yet);
2. the bytes stream through the validator into S3 (one streaming PUT whose last bytes are held
   back, or a multipart upload: invisible until completed, sink.py); any refusal, error or
   hang-up aborts it;
3. only after the last check the object is completed, and then one transaction checks the
   quotas (quotas.py) and writes the file row, its inference job (outbox), the study's new
   status and its event (outbox), and the audit record; if that transaction fails (a quota
   included), the object is removed again.

De-duplication: the same bytes in the same study return the existing file (no new row, no new
job); the same bytes in another study of the clinic get their own file row pointing at the
existing object, so the clinic stores one copy.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.events.v1 import InferenceJob
from gen.medmesh.ingest.v1 import FileStatus
from medmesh.db import Connection, Database
from medmesh.errors import DependencyUnavailable, FailedPrecondition, InvalidArgument, NotFound
from medmesh.identity import Identity
from medmesh.objects import RAW_IMAGES, ObjectStore
from medmesh.outbox import Outbox
from svc_ingest import store
from svc_ingest.config import IngestConfig
from svc_ingest.quotas import Quotas
from svc_ingest.sink import open_object_writer, store_validated_stream
from svc_ingest.status import CLOSED_STATUSES, StudyEvents, now_utc
from svc_ingest.studies import audit, require_study
from svc_ingest.validation import (
    FileDeclaration,
    FileValidator,
    ValidatedFile,
    check_declaration,
)

log = structlog.get_logger(__name__)

COMMIT_ATTEMPTS = 3
"""Tries of an accepted file's transaction when PostgreSQL aborts it as a deadlock victim
(40P01) or a serialization failure (40001); nothing but the rolled-back rows is redone."""
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


@dataclass(frozen=True)
class Accepted:
    """The outcome of an upload: the file, and whether it already existed in the study."""

    file: store.Row
    deduplicated: bool


def object_key(clinic_id: str, study_id: uuid.UUID, file_id: uuid.UUID) -> str:
    """Object keys hold ids only: never a patient or file name."""
    return f"{clinic_id}/{study_id}/{file_id}"


class Uploads:
    """The upload operations of IngestService."""

    def __init__(
        self,
        database: Database,
        objects: ObjectStore,
        outbox: Outbox,
        events: StudyEvents,
        config: IngestConfig,
    ) -> None:
        self._database = database
        self._objects = objects
        self._outbox = outbox
        self._events = events
        self._config = config
        self.quotas = Quotas(config)

    async def open_study(
        self, conn: Connection, identity: Identity, study_id: uuid.UUID
    ) -> store.Row:
        study = await require_study(conn, identity, study_id, for_update=True)
        if study["status"] in CLOSED_STATUSES:
            raise FailedPrecondition(f"studies/{study_id} takes no more files")
        return study

    async def _check_study(self, identity: Identity, study_id: uuid.UUID) -> None:
        async with self._database.read_connection() as conn:
            study = await require_study(conn, identity, study_id)
        if study["status"] in CLOSED_STATUSES:
            raise FailedPrecondition(f"studies/{study_id} takes no more files")

    async def upload(
        self,
        identity: Identity,
        study_id: uuid.UUID,
        declaration: FileDeclaration,
        chunks: AsyncIterator[bytes | memoryview],
    ) -> Accepted:
        """Stream, validate and store one file (see the module docstring for the order)."""
        await self._check_study(identity, study_id)
        await self.quotas.precheck_bytes(
            self._database, identity.clinic_id, declaration.size_bytes, declaration.sha256
        )
        file_id = uuid.uuid4()
        key = object_key(identity.clinic_id, study_id, file_id)
        validator = FileValidator(
            declaration, self._config, content_field="chunk", prefix="metadata."
        )
        writer = open_object_writer(
            self._objects,
            RAW_IMAGES,
            key,
            content_type=declaration.content_type,
            size=declaration.size_bytes,
            part_size=self._config.part_size_bytes,
            streaming_put_max=self._config.streaming_put_max_bytes,
        )
        validated = await store_validated_stream(chunks, validator, writer)
        return await self.accept_stored_object(
            identity, study_id, file_id, key, declaration, validated
        )

    async def create_text_note(
        self, identity: Identity, study_id: uuid.UUID, text: str, file_name: str
    ) -> Accepted:
        """A clinical note: validated like any file, stored as UTF-8 text."""
        data = text.encode()
        if not text.strip():
            raise InvalidArgument.for_field("text", "must not be empty")
        if len(data) > self._config.max_text_bytes:
            raise InvalidArgument.for_field(
                "text", f"is larger than {self._config.max_text_bytes} bytes of UTF-8"
            )
        declaration = check_declaration(
            kind=FileKind.TEXT_NOTE,
            file_name=file_name or "note.txt",
            content_type="text/plain; charset=utf-8",
            size_bytes=len(data),
            sha256="",
            config=self._config,
        )
        validator = FileValidator(declaration, self._config, content_field="text")
        validator.feed(data)
        validated = validator.finish()
        await self._check_study(identity, study_id)
        await self.quotas.precheck_bytes(self._database, identity.clinic_id, len(data))
        file_id = uuid.uuid4()
        key = object_key(identity.clinic_id, study_id, file_id)
        await self._objects.put_bytes(RAW_IMAGES, key, data, content_type=declaration.content_type)
        return await self.accept_stored_object(
            identity, study_id, file_id, key, declaration, validated
        )

    async def accept_stored_object(
        self,
        identity: Identity,
        study_id: uuid.UUID,
        file_id: uuid.UUID,
        key: str,
        declaration: FileDeclaration,
        validated: ValidatedFile,
        *,
        pending: bool = False,
    ) -> Accepted:
        """Commit the rows for an object already in S3; remove the object when it turns out
        redundant or the transaction fails. `pending`: the file was announced by
        CreateUploadUrl and `key` is the copy its completion claimed (presigned.py)."""
        try:
            for attempt in range(1, COMMIT_ATTEMPTS + 1):
                try:
                    async with self._database.transaction() as conn:
                        accepted, redundant = await self._commit_file(
                            conn,
                            identity,
                            study_id,
                            file_id,
                            key,
                            declaration,
                            validated,
                            pending=pending,
                        )
                    break
                except _RETRYABLE as exc:
                    # The locks are taken in one order (study, then files; see status.py), so
                    # this is a backstop: PostgreSQL rolled the whole transaction back.
                    if attempt == COMMIT_ATTEMPTS:
                        raise
                    log.warning("upload commit retried", sqlstate=exc.sqlstate, attempt=attempt)
        except BaseException:
            await asyncio.shield(self._remove_quietly(key))
            raise
        if redundant:
            await self._remove_quietly(key)
        return accepted

    async def _commit_file(
        self,
        conn: Connection,
        identity: Identity,
        study_id: uuid.UUID,
        file_id: uuid.UUID,
        key: str,
        declaration: FileDeclaration,
        validated: ValidatedFile,
        *,
        pending: bool,
    ) -> tuple[Accepted, bool]:
        """The transaction of an accepted file; returns it and whether `key` is redundant."""
        study = await self.open_study(conn, identity, study_id)
        if pending:
            announced = await self._lock_pending(conn, identity, study_id, file_id, key)
            if announced is not None:  # another CompleteUpload accepted it first
                return Accepted(announced, deduplicated=False), True
        existing = await store.find_study_file_by_sha(conn, study_id, validated.sha256)
        if existing is not None:
            if pending:
                await store.delete_file(conn, file_id)
            await audit(
                conn, identity, "study.file.deduplicate", study_id, file_id=str(existing["file_id"])
            )
            return Accepted(existing, deduplicated=True), True
        if not pending:  # a pending file was counted when it was announced
            await self.quotas.check_study_files(conn, study_id)
        shared_key = await store.find_clinic_object_by_sha(
            conn, identity.clinic_id, validated.sha256
        )
        if shared_key is None:
            await self.quotas.add_stored_bytes(conn, identity.clinic_id, validated.size_bytes)
        now = now_utc()
        job_id = uuid.uuid4()
        values: dict[str, Any] = {
            "file_id": file_id,
            "study_id": study_id,
            "clinic_id": identity.clinic_id,
            "kind": int(declaration.kind),
            "file_name": declaration.file_name,
            "content_type": declaration.content_type,
            "size_bytes": validated.size_bytes,
            "sha256": validated.sha256,
            "object_key": shared_key or key,
            "status": int(FileStatus.STORED),
            "image_width": validated.dimensions.width if validated.dimensions else None,
            "image_height": validated.dimensions.height if validated.dimensions else None,
            "failure_reason": "",
            "job_id": job_id,
            "result_id": "",
            "create_time": now,
            "update_time": now,
        }
        if pending:
            changes = {
                k: values[k]
                for k in (
                    "sha256",
                    "object_key",
                    "status",
                    "image_width",
                    "image_height",
                    "job_id",
                    "size_bytes",
                )
            }
            changes.update(completion_key=None, completion_started=None)
            row: store.Row | None = await store.update_file(conn, file_id, now, **changes)
        else:
            row = await store.insert_file(conn, values)
        if row is None:  # pragma: no cover - the study lock serialises same-study commits
            raise FailedPrecondition("a concurrent upload stored the same file; retry")
        topology = self._events.topology
        subject = (
            topology.infer_text_subject
            if declaration.kind == FileKind.TEXT_NOTE
            else topology.infer_image_subject
        )
        # Tells svc_infer how many results make the study complete (it announces that).
        file_count = len(await store.file_statuses(conn, study_id))
        job = InferenceJob(
            job_id=str(job_id),
            clinic_id=identity.clinic_id,
            study_id=str(study_id),
            file_id=str(file_id),
            kind=declaration.kind,
            bucket=self._objects.bucket(RAW_IMAGES),
            object_key=row["object_key"],
            content_type=declaration.content_type,
            sha256=validated.sha256,
            enqueue_time=now,
            study_file_count=file_count,
        )
        # The clinic's lane: one clinic's flood cannot starve others' jobs (medmesh.lanes).
        subject = topology.publish_subject(subject, identity.clinic_id)
        await self._outbox.enqueue(conn, subject, job, msg_id=job_id)
        await self._events.record_change(
            conn, study, now, file_id=str(file_id), reason="file stored"
        )
        await audit(
            conn,
            identity,
            "study.file.upload",
            study_id,
            file_id=str(file_id),
            kind=declaration.kind.name,
            sha256=validated.sha256,
            size_bytes=validated.size_bytes,
        )
        return Accepted(row, deduplicated=False), shared_key is not None

    @staticmethod
    async def _lock_pending(
        conn: Connection,
        identity: Identity,
        study_id: uuid.UUID,
        file_id: uuid.UUID,
        completion_key: str,
    ) -> store.Row | None:
        """Lock an announced file for its completion: None when it is still pending and this
        completion's copy is the one claimed; the row when it was accepted meanwhile."""
        row = await store.get_file(conn, identity.clinic_id, study_id, file_id, for_update=True)
        if row is None:
            raise NotFound(f"studies/{study_id}/files/{file_id} not found")
        if row["status"] == FileStatus.REJECTED:
            raise FailedPrecondition(f"the upload was rejected: {row['failure_reason']}")
        if row["status"] != FileStatus.PENDING_UPLOAD:
            return row
        if row["completion_key"] != completion_key:
            raise FailedPrecondition("another CompleteUpload of this file took over; retry")
        return None

    async def remove_quietly(self, key: str) -> None:
        """Remove an object; a failure is logged (the sweeper or a later delete retries)."""
        await self._remove_quietly(key)

    async def _remove_quietly(self, key: str) -> None:
        try:
            await self._objects.remove(RAW_IMAGES, key)
        except DependencyUnavailable as exc:
            log.warning("object cleanup failed", key=key, error=str(exc))
