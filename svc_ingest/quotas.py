"""Per-clinic quotas (issue 11, item 15): files per study, pending presigned uploads per
clinic, bytes stored per clinic. Each is a `MEDMESH_INGEST_*` setting; exceeding one is
RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure naming it.

Counting is atomic because every check runs inside the transaction that would add the file,
under a lock: the study's row (files per study, taken by the upload already) and the clinic's
`ingest.clinic_usage` row (pending uploads, bytes). Two concurrent uploads of one clinic
therefore count one after the other and never both squeeze under the limit. Before any byte is
streamed, `precheck_bytes` refuses a declared size that cannot fit unless its declared
SHA-256 is already stored (no lock: the commit-time check stays the one that counts).
"""

from __future__ import annotations

import uuid

from medmesh.db import Connection, Database
from medmesh.errors import ResourceExhausted
from svc_ingest import store
from svc_ingest.config import IngestConfig


def _exceeded(subject: str, description: str) -> ResourceExhausted:
    return ResourceExhausted.for_quota(subject, description)


class Quotas:
    """The quota checks, with the limits from IngestConfig."""

    def __init__(self, config: IngestConfig) -> None:
        self._config = config

    async def check_study_files(self, conn: Connection, study_id: uuid.UUID) -> None:
        """One more file fits in the study (its row is locked by the caller)."""
        limit = self._config.max_files_per_study
        if await store.count_study_files(conn, study_id) >= limit:
            raise _exceeded(
                f"studies/{study_id}/files",
                f"a study holds at most {limit} files (pending uploads included)",
            )

    async def check_pending_uploads(self, conn: Connection, clinic_id: str) -> None:
        """One more presigned upload fits in the clinic (locks its usage row)."""
        await store.lock_clinic_usage(conn, clinic_id)
        limit = self._config.max_pending_uploads
        if await store.count_pending_uploads(conn, clinic_id) >= limit:
            raise _exceeded(
                f"clinics/{clinic_id}/pendingUploads",
                f"at most {limit} presigned uploads may be pending; complete or wait for"
                " abandoned ones to expire",
            )

    def _bytes_violation(self, clinic_id: str, stored: int, size: int) -> ResourceExhausted:
        limit = self._config.max_stored_bytes
        return _exceeded(
            f"clinics/{clinic_id}/storedBytes",
            f"the clinic stores {stored} of {limit} bytes; {size} more do not fit",
        )

    async def precheck_bytes(
        self, database: Database, clinic_id: str, size: int, sha256: str = ""
    ) -> None:
        """Refuse a declared size that cannot fit before any byte is read (advisory). Bytes
        the clinic stores already cost nothing, but only a declared SHA-256 tells so here."""
        async with database.read_connection() as conn:
            stored = await store.stored_bytes(conn, clinic_id)
            if stored + size <= self._config.max_stored_bytes:
                return
            if sha256 and await store.find_clinic_object_by_sha(
                conn, clinic_id, sha256.lower(), lock=False
            ):
                return
        raise self._bytes_violation(clinic_id, stored, size)

    async def add_stored_bytes(self, conn: Connection, clinic_id: str, size: int) -> None:
        """Count a new object of `size` bytes for the clinic, or refuse it (atomic: the
        clinic's usage row stays locked until the caller's transaction ends)."""
        stored = await store.lock_clinic_usage(conn, clinic_id)
        if stored + size > self._config.max_stored_bytes:
            raise self._bytes_violation(clinic_id, stored, size)
        await store.add_stored_bytes(conn, clinic_id, size)
