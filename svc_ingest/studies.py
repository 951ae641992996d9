"""Studies: create, read, list, delete, watch. Every call is scoped to the caller's clinic (a
study of another clinic is NOT_FOUND, indistinguishable from one that never existed) and
writes an `audit.events` row in the transaction that reads or changes the study."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from gen.medmesh.common.v1 import StudyStatus
from medmesh.audit import Actor, audit_denials, record_audit_event
from medmesh.db import Connection, Database
from medmesh.errors import DependencyUnavailable, FailedPrecondition, InvalidArgument, NotFound
from medmesh.identity import Identity
from medmesh.objects import RAW_IMAGES, ObjectStore
from svc_ingest import store
from svc_ingest.events import StatusHub
from svc_ingest.status import BUSY_STATUSES, FINAL_STATUSES, now_utc

log = structlog.get_logger(__name__)

MAX_PATIENT_REF = 128
MAX_DESCRIPTION = 2000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DOWNLOAD_URL_TTL = timedelta(minutes=5)
"""Lifetime of a GetFileDownloadUrl URL: long enough to load an image, short enough that a
copied URL is soon useless."""


@dataclass(frozen=True)
class StudyView:
    """A study row with its file rows."""

    study: store.Row
    files: list[store.Row] = field(default_factory=list)


@dataclass(frozen=True)
class FileDownload:
    """A presigned GET URL of a stored file's bytes."""

    url: str
    expire_time: datetime
    content_type: str
    size_bytes: int


@dataclass(frozen=True)
class WatchUpdate:
    """One message of a WatchStudy stream."""

    study_id: str
    status: StudyStatus
    previous_status: StudyStatus
    file: store.Row | None
    reason: str
    event_time: datetime


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def parse_study_name(name: str, field_path: str) -> uuid.UUID:
    """`studies/{uuid}` → the id; INVALID_ARGUMENT naming `field_path` otherwise."""
    collection, _, raw_id = name.partition("/")
    study_id = _uuid(raw_id) if collection == "studies" else None
    if study_id is None:
        raise InvalidArgument.for_field(field_path, "must look like studies/{study}")
    return study_id


def parse_file_name(name: str, field_path: str) -> tuple[uuid.UUID, uuid.UUID]:
    """`studies/{uuid}/files/{uuid}` → (study id, file id)."""
    parts = name.split("/")
    well_formed = len(parts) == 4 and parts[0] == "studies" and parts[2] == "files"
    study_id = _uuid(parts[1]) if well_formed else None
    file_id = _uuid(parts[3]) if well_formed else None
    if study_id is None or file_id is None:
        raise InvalidArgument.for_field(field_path, "must look like studies/{study}/files/{file}")
    return study_id, file_id


async def audit(
    conn: Connection, identity: Identity, action: str, study_id: uuid.UUID | None, **detail: object
) -> None:
    """One audit event for the caller's action on a study (same transaction as the action)."""
    await record_audit_event(
        conn,
        clinic_id=identity.clinic_id,
        actor=Actor(identity.user_id, sorted(identity.roles)),
        action=action,
        resource=f"studies/{study_id}" if study_id else "studies",
        study_id=str(study_id) if study_id else None,
        detail=detail,
    )


async def require_study(
    conn: Connection, identity: Identity, study_id: uuid.UUID, *, for_update: bool = False
) -> store.Row:
    """The caller's clinic's study, or NOT_FOUND."""
    study = await store.get_study(conn, identity.clinic_id, study_id, for_update=for_update)
    if study is None:
        raise NotFound(f"studies/{study_id} not found")
    return study


def _filters_digest(patient_ref: str, status: int) -> str:
    return hashlib.sha256(f"{patient_ref}\x00{status}".encode()).hexdigest()[:16]


def encode_page_token(row: store.Row, patient_ref: str, status: int) -> str:
    """An opaque cursor after `row`, bound to the filters it was issued for."""
    raw = json.dumps(
        {
            "t": row["create_time"].isoformat(),
            "id": str(row["study_id"]),
            "f": _filters_digest(patient_ref, status),
        }
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(
    token: str, patient_ref: str, status: int
) -> tuple[datetime, uuid.UUID] | None:
    """The cursor in `token`; INVALID_ARGUMENT when it is garbage or from other filters."""
    if not token:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor = datetime.fromisoformat(raw["t"]), uuid.UUID(raw["id"])
        digest = raw["f"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument.for_field("page_token", "is not a valid page token") from None
    if digest != _filters_digest(patient_ref, status):
        raise InvalidArgument.for_field("page_token", "was issued for other filters")
    return cursor


class Studies:
    """The study operations; uploads live in uploads.py."""

    def __init__(self, database: Database, objects: ObjectStore, hub: StatusHub) -> None:
        self._database = database
        self._objects = objects
        self._hub = hub

    async def create_study(
        self, identity: Identity, patient_ref: str, description: str
    ) -> StudyView:
        """A new, empty study in the caller's clinic."""
        violations = []
        if not patient_ref.strip() or len(patient_ref) > MAX_PATIENT_REF:
            violations.append(
                ("patient_ref", f"is required and at most {MAX_PATIENT_REF} characters")
            )
        if len(description) > MAX_DESCRIPTION:
            violations.append(("description", f"is at most {MAX_DESCRIPTION} characters"))
        if violations:
            field_path, description_text = violations[0]
            raise InvalidArgument.for_field(field_path, description_text)
        study_id = uuid.uuid4()
        async with self._database.transaction() as conn:
            row = await store.insert_study(
                conn,
                study_id=study_id,
                clinic_id=identity.clinic_id,
                patient_ref=patient_ref,
                description=description,
                status=int(StudyStatus.CREATED),
                creator=identity.user_id,
                now=now_utc(),
            )
            await audit(conn, identity, "study.create", study_id)
        return StudyView(row)

    async def get_study(self, identity: Identity, study_id: uuid.UUID) -> StudyView:
        """The study with its files."""
        async with (
            audit_denials(self._database, identity, "GetStudy", f"studies/{study_id}"),
            self._database.transaction() as conn,
        ):
            study = await require_study(conn, identity, study_id)
            files = await store.list_files(conn, study_id)
            await audit(conn, identity, "study.read", study_id)
        return StudyView(study, files)

    async def get_file(
        self, identity: Identity, study_id: uuid.UUID, file_id: uuid.UUID
    ) -> store.Row:
        """One file of one of the caller's studies."""
        name = f"studies/{study_id}/files/{file_id}"
        async with (
            audit_denials(self._database, identity, "GetFile", name),
            self._database.transaction() as conn,
        ):
            file = await store.get_file(conn, identity.clinic_id, study_id, file_id)
            if file is None:
                raise NotFound(f"{name} not found")
            await audit(conn, identity, "study.file.read", study_id, file_id=str(file_id))
        return file

    async def file_download_url(
        self, identity: Identity, study_id: uuid.UUID, file_id: uuid.UUID
    ) -> FileDownload:
        """A presigned GET URL of a stored file's original bytes; audited (the row commits
        before the URL exists)."""
        name = f"studies/{study_id}/files/{file_id}"
        async with (
            audit_denials(self._database, identity, "GetFileDownloadUrl", name),
            self._database.transaction() as conn,
        ):
            file = await store.get_file(conn, identity.clinic_id, study_id, file_id)
            if file is None:
                raise NotFound(f"{name} not found")
            if file["status"] in (store.PENDING_UPLOAD, store.REJECTED) or not file["object_key"]:
                raise FailedPrecondition(f"{name} has no stored bytes")
            await audit(conn, identity, "study.file.download_url", study_id, file_id=str(file_id))
        url = await self._objects.presigned_get_url(
            RAW_IMAGES, file["object_key"], expires=DOWNLOAD_URL_TTL
        )
        return FileDownload(
            url, now_utc() + DOWNLOAD_URL_TTL, file["content_type"], int(file["size_bytes"])
        )

    async def list_studies(
        self,
        identity: Identity,
        *,
        page_size: int,
        page_token: str,
        patient_ref: str,
        status: int,
    ) -> tuple[list[store.Row], str]:
        """A page of the clinic's studies and the token of the next page ('' on the last)."""
        if page_size < 0:
            raise InvalidArgument.for_field("page_size", "must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(page_token, patient_ref, status)
        async with self._database.transaction() as conn:
            rows = await store.list_studies(
                conn,
                clinic_id=identity.clinic_id,
                patient_ref=patient_ref,
                status=status,
                after=after,
                limit=size + 1,
            )
            await audit(conn, identity, "study.list", None, returned=min(len(rows), size))
        if len(rows) > size:
            return rows[:size], encode_page_token(rows[size - 1], patient_ref, status)
        return rows, ""

    async def delete_study(self, identity: Identity, study_id: uuid.UUID) -> None:
        """Delete the study's rows, then the objects no other file shares.

        The audit record stays (audit.events is append-only). An object whose removal fails
        after the commit is logged; it is unreachable and has no row.
        """
        async with self._database.transaction() as conn:
            study = await require_study(conn, identity, study_id, for_update=True)
            status = StudyStatus(study["status"])
            if status in BUSY_STATUSES:
                raise FailedPrecondition(f"studies/{study_id} is {status.name}; wait for it")
            files = await store.delete_study(conn, study_id)
            keys = sorted({f["object_key"] for f in files})
            orphaned = sorted(set(keys) - await store.referenced_objects(conn, keys))
            # Bytes the clinic no longer stores: its accepted objects no other file shares.
            sizes = {
                f["object_key"]: f["size_bytes"]
                for f in files
                if f["status"] not in (store.PENDING_UPLOAD, store.REJECTED)
            }
            freed = sum(sizes.get(key, 0) for key in orphaned)
            if freed:
                await store.add_stored_bytes(conn, identity.clinic_id, -freed)
            await audit(conn, identity, "study.delete", study_id, objects_removed=len(orphaned))
            # A completion copy in progress is removed too (its CompleteUpload then finds
            # the file gone and fails with NOT_FOUND).
            orphaned += [f["completion_key"] for f in files if f["completion_key"]]
        for key in orphaned:
            try:
                await self._objects.remove(RAW_IMAGES, key)
            except DependencyUnavailable as exc:
                log.warning("object removal failed after delete", key=key, error=str(exc))

    async def watch(self, identity: Identity, study_id: uuid.UUID) -> AsyncIterator[WatchUpdate]:
        """The study's current state, then each change, until a final status."""
        with self._hub.watch(str(study_id)) as queue:
            async with (
                audit_denials(self._database, identity, "WatchStudy", f"studies/{study_id}"),
                self._database.transaction() as conn,
            ):
                study = await require_study(conn, identity, study_id)
                await audit(conn, identity, "study.watch", study_id)
            status = StudyStatus(study["status"])
            last_time: datetime = study["update_time"]
            yield WatchUpdate(
                str(study_id),
                status,
                StudyStatus.UNSPECIFIED,
                None,
                study["failure_reason"],
                last_time,
            )
            while status not in FINAL_STATUSES:
                event = await queue.get()
                if event is None:
                    raise DependencyUnavailable("ingest", "the server is shutting down")
                if event.event_time <= last_time:
                    continue  # already part of the state sent
                last_time, status = event.event_time, StudyStatus(event.status)
                file = None
                if event.file_id:
                    async with self._database.read_connection() as conn:
                        file = await store.get_file(
                            conn, identity.clinic_id, study_id, uuid.UUID(event.file_id)
                        )
                yield WatchUpdate(
                    str(study_id),
                    status,
                    StudyStatus(event.previous_status),
                    file,
                    event.reason,
                    event.event_time,
                )
