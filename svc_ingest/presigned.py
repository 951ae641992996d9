"""Presigned uploads: CreateUploadUrl announces a file and hands out a presigned PUT URL,
CompleteUpload accepts what was PUT.

A presigned PUT URL stays valid until it expires, whatever the server does in between, so the
key it names can be overwritten by whoever holds it, also after CompleteUpload. That key is
therefore only a staging area (`staging/<clinic>/<study>/<file>`): CompleteUpload copies the
staged object server-side (the bytes never leave S3; only if it still has the ETag whose size
was checked) to a key of its own that no URL was ever issued for, validates and hashes THAT
copy, makes it the file's object and removes the staged one. Workers, downloads and reports
only ever see the copy; a later PUT to the old URL lands in the staging area, where nothing
reads it and the sweeper (sweeper.py) removes it.

Each completion records its copy's key on the file before copying (a lease, `completion_key`),
so a concurrent CompleteUpload of the same file is refused instead of racing it, and a
completion that died half-way leaves a key the next one (or the sweeper) removes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import structlog

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.ingest.v1 import FileStatus
from medmesh.db import Database
from medmesh.errors import FailedPrecondition, InvalidArgument, NotFound
from medmesh.identity import Identity
from medmesh.objects import RAW_IMAGES, ObjectStore
from svc_ingest import store
from svc_ingest.config import IngestConfig
from svc_ingest.status import now_utc
from svc_ingest.studies import audit
from svc_ingest.uploads import Accepted, Uploads, object_key
from svc_ingest.validation import FileDeclaration, FileValidator, ValidatedFile

log = structlog.get_logger(__name__)
_READ_PIECE = 1024 * 1024
STAGING_PREFIX = "staging/"


def staging_key(clinic_id: str, study_id: uuid.UUID, file_id: uuid.UUID) -> str:
    """The only kind of key a presigned PUT URL is issued for."""
    return f"{STAGING_PREFIX}{clinic_id}/{study_id}/{file_id}"


@dataclass(frozen=True)
class PresignedUpload:
    """Where to PUT the bytes of a pending file, until when."""

    url: str
    expires_in: timedelta
    file: store.Row


class PresignedUploads:
    """CreateUploadUrl and CompleteUpload."""

    def __init__(
        self, database: Database, objects: ObjectStore, uploads: Uploads, config: IngestConfig
    ) -> None:
        self._database = database
        self._objects = objects
        self._uploads = uploads
        self._config = config

    async def create_upload_url(
        self, identity: Identity, study_id: uuid.UUID, declaration: FileDeclaration
    ) -> PresignedUpload:
        """A pending file and a presigned PUT URL for its staging key."""
        quotas = self._uploads.quotas
        await quotas.precheck_bytes(
            self._database, identity.clinic_id, declaration.size_bytes, declaration.sha256
        )
        file_id = uuid.uuid4()
        key = staging_key(identity.clinic_id, study_id, file_id)
        expires = timedelta(seconds=self._config.presign_expiry_s)
        async with self._database.transaction() as conn:
            await self._uploads.open_study(conn, identity, study_id)
            await quotas.check_study_files(conn, study_id)
            await quotas.check_pending_uploads(conn, identity.clinic_id)
            now = now_utc()
            row = await store.insert_file(
                conn,
                {
                    "file_id": file_id,
                    "study_id": study_id,
                    "clinic_id": identity.clinic_id,
                    "kind": int(declaration.kind),
                    "file_name": declaration.file_name,
                    "content_type": declaration.content_type,
                    "size_bytes": declaration.size_bytes,
                    "sha256": declaration.sha256,
                    "object_key": key,
                    "status": int(FileStatus.PENDING_UPLOAD),
                    "failure_reason": "",
                    "result_id": "",
                    "create_time": now,
                    "update_time": now,
                },
            )
            assert row is not None
            await audit(conn, identity, "study.file.announce", study_id, file_id=str(file_id))
            url = await self._objects.presigned_put_url(RAW_IMAGES, key, expires=expires)
        return PresignedUpload(url, expires, row)

    async def complete_upload(
        self, identity: Identity, study_id: uuid.UUID, file_id: uuid.UUID
    ) -> Accepted:
        """Copy the staged object out of the client's reach, validate the copy, accept it (or
        reject the file); see the module docstring."""
        async with self._database.read_connection() as conn:
            row = await store.get_file(conn, identity.clinic_id, study_id, file_id)
        row = _still_pending(row, study_id, file_id)
        if row["status"] != FileStatus.PENDING_UPLOAD:
            return Accepted(row, deduplicated=False)  # completed before: idempotent
        staged = row["object_key"]
        copy_key = object_key(identity.clinic_id, study_id, uuid.uuid4())
        async with self._database.transaction() as conn:
            claim = await store.claim_completion(
                conn, file_id, copy_key, now_utc(), self._config.complete_lease_s
            )
        if claim is None:
            async with self._database.read_connection() as conn:
                row = await store.get_file(conn, identity.clinic_id, study_id, file_id)
            row = _still_pending(row, study_id, file_id)
            if row["status"] != FileStatus.PENDING_UPLOAD:
                return Accepted(row, deduplicated=False)
            raise FailedPrecondition("another CompleteUpload of this file is running; retry")
        if claim["previous_key"]:  # a completion that died (its lease ran out)
            await self._uploads.remove_quietly(claim["previous_key"])
        declaration = FileDeclaration(
            FileKind(row["kind"]),
            row["file_name"],
            row["content_type"],
            row["size_bytes"],
            row["sha256"],
        )
        try:
            validated = await self._copy_and_validate(staged, copy_key, declaration)
        except InvalidArgument as exc:
            await self._reject(identity, study_id, file_id, (staged, copy_key), exc.message)
            raise
        except BaseException:
            await asyncio.shield(self._release(file_id, copy_key))
            raise
        try:
            accepted = await self._uploads.accept_stored_object(
                identity, study_id, file_id, copy_key, declaration, validated, pending=True
            )
        except BaseException:  # the copy is gone already; let a retry claim the file again
            await asyncio.shield(self._release(file_id, copy_key, remove=False))
            raise
        await self._uploads.remove_quietly(staged)
        return accepted

    async def _copy_and_validate(
        self, staged: str, copy_key: str, declaration: FileDeclaration
    ) -> ValidatedFile:
        """The staged object, if it has the declared size, copied to `copy_key` and read back
        from there through the validator."""
        try:
            size, etag = await self._objects.stat(RAW_IMAGES, staged)
        except NotFound:
            raise FailedPrecondition("no object was uploaded to the URL yet") from None
        if size != declaration.size_bytes:
            raise InvalidArgument.for_field(
                "name", f"the uploaded object has {size} bytes, {declaration.size_bytes} declared"
            )
        try:
            await self._objects.copy(RAW_IMAGES, staged, copy_key, if_match=etag)
        except NotFound:
            raise FailedPrecondition("no object was uploaded to the URL yet") from None
        return await self._validate_object(copy_key, declaration)

    async def _validate_object(self, key: str, declaration: FileDeclaration) -> ValidatedFile:
        """Read the object back in pieces through the validator (bounded memory)."""
        validator = FileValidator(declaration, self._config, content_field="name")
        bucket = self._objects.bucket(RAW_IMAGES)
        response = await asyncio.to_thread(self._objects.client.get_object, bucket, key)
        try:
            pieces: Iterator[bytes] = response.stream(_READ_PIECE)
            while piece := await asyncio.to_thread(next, pieces, b""):
                validator.feed(piece)
        finally:
            response.close()
            response.release_conn()
        return validator.finish()

    async def _reject(
        self,
        identity: Identity,
        study_id: uuid.UUID,
        file_id: uuid.UUID,
        keys: tuple[str, ...],
        reason: str,
    ) -> None:
        """Mark the file REJECTED and remove what was uploaded and copied."""
        for key in keys:
            await self._uploads.remove_quietly(key)
        async with self._database.transaction() as conn:
            row = await store.get_file(conn, identity.clinic_id, study_id, file_id, for_update=True)
            if row is None or row["status"] != FileStatus.PENDING_UPLOAD:
                return  # deleted or swept meanwhile: nothing left to mark
            await store.update_file(
                conn,
                file_id,
                now_utc(),
                status=int(FileStatus.REJECTED),
                failure_reason=reason,
                completion_key=None,
                completion_started=None,
            )
            await audit(conn, identity, "study.file.reject", study_id, file_id=str(file_id))

    async def _release(self, file_id: uuid.UUID, copy_key: str, *, remove: bool = True) -> None:
        """Give the file back to a later CompleteUpload after a failure (best effort: if this
        fails too, the lease expires and the next completion or the sweeper cleans up)."""
        if remove:
            await self._uploads.remove_quietly(copy_key)
        try:
            async with self._database.transaction() as conn:
                await store.release_completion(conn, file_id, copy_key)
        except Exception as exc:  # noqa: BLE001 - the original failure is what the caller sees
            log.warning("completion release failed", file_id=str(file_id), error=str(exc))


def _still_pending(row: store.Row | None, study_id: uuid.UUID, file_id: uuid.UUID) -> store.Row:
    """The file's row; NOT_FOUND when gone, FAILED_PRECONDITION when rejected."""
    if row is None:
        raise NotFound(f"studies/{study_id}/files/{file_id} not found")
    if row["status"] == FileStatus.REJECTED:
        raise FailedPrecondition(f"the upload was rejected: {row['failure_reason']}")
    return row
