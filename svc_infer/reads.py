"""GetResult and ListResults: Redis first, then PostgreSQL (the read replica when one is
configured), always within the caller's clinic. A result of another clinic is NOT_FOUND,
and a list of another clinic's study is empty, exactly like a study that does not exist.
GetResultImageUrl: a presigned GET URL of an image result's processed PNG.

Every read is audited after it succeeds: `result.read` and `result.list` through the
batched background writer (`medmesh.audit_writer.AuditWriter`: committed a few ms after the
answer, written synchronously when its queue is full, never dropped), `result.image_url`
with one INSERT on the primary before the URL leaves. A NOT_FOUND leaves an `access.denied`
row under the caller's clinic (synchronously)."""

from __future__ import annotations

import builtins
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gen.medmesh.infer.v1 import Result
from medmesh.audit import audit_denials, record_access
from medmesh.audit_writer import AuditWriter
from medmesh.db import Database
from medmesh.errors import InvalidArgument, NotFound
from medmesh.identity import Identity
from medmesh.objects import PROCESSED_IMAGES, ObjectStore
from svc_infer import store
from svc_infer.cache import ResultCache
from svc_infer.convert import result_to_proto
from svc_infer.pages import decode_token, encode_token, page_size

IMAGE_URL_TTL = timedelta(minutes=5)
"""Lifetime of a GetResultImageUrl URL: enough to load the picture, soon useless if copied."""

_RESULT_NAME = re.compile(r"studies/(?P<study>[^/]+)/results/(?P<result>[^/]+)")
_STUDY_NAME = re.compile(r"studies/(?P<study>[^/]+)")


def parse_result_name(name: str) -> tuple[str, str]:
    """`studies/{study}/results/{result}` → (study id, result id)."""
    match = _RESULT_NAME.fullmatch(name)
    if not match:
        raise InvalidArgument.for_field("name", "must look like studies/{study}/results/{result}")
    return match["study"], match["result"]


def parse_study_name(name: str, field: str = "parent") -> str:
    """`studies/{study}` → study id."""
    match = _STUDY_NAME.fullmatch(name)
    if not match:
        raise InvalidArgument.for_field(field, "must look like studies/{study}")
    return match["study"]


def _key(result: Result) -> tuple[datetime, str]:
    assert result.create_time is not None  # stored results always have one
    return result.create_time, result.result_id


@dataclass(frozen=True)
class ImageUrl:
    """A presigned GET URL of a processed image."""

    url: str
    expire_time: datetime
    content_type: str = "image/png"


class ResultReader:
    """Reads results for one clinic at a time."""

    def __init__(
        self,
        database: Database,
        cache: ResultCache,
        objects: ObjectStore,
        audit: AuditWriter | None = None,
    ) -> None:
        self._database = database
        self._cache = cache
        self._objects = objects
        self._audit = audit

    async def _record_read(
        self, identity: Identity, action: str, resource: str, study_id: str, **detail: int
    ) -> None:
        if self._audit is not None:
            await self._audit.record_access(
                identity, action, resource, study_id=study_id, detail=detail
            )
        else:
            await record_access(
                self._database, identity, action, resource, study_id=study_id, detail=detail
            )

    async def read(self, identity: Identity, name: str) -> Result:
        """GetResult: the result, audited as `result.read`."""
        study_id, _ = parse_result_name(name)
        async with audit_denials(self._database, identity, "GetResult", name):
            result = await self.get(identity.clinic_id, name)
        await self._record_read(identity, "result.read", name, study_id)
        return result

    async def read_list(
        self, identity: Identity, parent: str, size: int, token: str
    ) -> tuple[list[Result], str]:
        """ListResults: a page, audited as `result.list` with the number returned."""
        study_id = parse_study_name(parent)
        page, next_token = await self.list(identity.clinic_id, parent, size, token)
        await self._record_read(
            identity, "result.list", f"studies/{study_id}", study_id, returned=len(page)
        )
        return page, next_token

    async def image_url(self, identity: Identity, name: str) -> ImageUrl:
        """GetResultImageUrl: a presigned URL of the processed PNG, audited as
        `result.image_url`. NOT_FOUND for another clinic's result (audited as denied) and
        for a result without a processed image (a note's)."""
        study_id, result_id = parse_result_name(name)
        async with audit_denials(self._database, identity, "GetResultImageUrl", name):
            try:
                key = uuid.UUID(result_id)
            except ValueError:
                raise NotFound(f"{name} does not exist") from None
            async with self._database.read_connection() as conn:
                row = await store.get_result(conn, identity.clinic_id, study_id, key)
            if row is None:
                raise NotFound(f"{name} does not exist")
        processed_key = row.draft.processed_key
        if not processed_key:
            raise NotFound(f"{name} has no processed image")
        await record_access(self._database, identity, "result.image_url", name, study_id=study_id)
        url = await self._objects.presigned_get_url(
            PROCESSED_IMAGES, processed_key, expires=IMAGE_URL_TTL
        )
        return ImageUrl(url, datetime.now(UTC) + IMAGE_URL_TTL)

    async def get(self, clinic_id: str, name: str) -> Result:
        """One result; NotFound unless it is the clinic's and belongs to the named study."""
        study_id, result_id = parse_result_name(name)
        cached = await self._cache.get_result(result_id)
        if cached is not None:
            if cached.clinic_id != clinic_id or cached.study != f"studies/{study_id}":
                raise NotFound(f"{name} does not exist")
            return cached
        try:
            key = uuid.UUID(result_id)
        except ValueError:
            raise NotFound(f"{name} does not exist") from None
        async with self._database.read_connection() as conn:
            row = await store.get_result(conn, clinic_id, study_id, key)
        if row is None:
            raise NotFound(f"{name} does not exist")
        result = result_to_proto(row)
        await self._cache.put_results([result], stored=False)
        return result

    async def list(
        self, clinic_id: str, parent: str, size: int, token: str
    ) -> tuple[list[Result], str]:
        """One page of a study's results, oldest first."""
        study_id = parse_study_name(parent)
        limit = page_size(size)
        key = decode_token("results", token, 3)
        after: tuple[datetime, str] | None = None
        if key is not None:
            if key[2] != study_id:
                raise InvalidArgument.for_field("page_token", "belongs to another study")
            after = (datetime.fromisoformat(key[0]), key[1])
        cached = await self._cache.get_study(clinic_id, study_id)
        if cached is not None:
            results = cached
            if after is not None:
                results = [r for r in results if _key(r) > after]
            page, more = results[:limit], len(results) > limit
        else:
            seen = await self._cache.study_version(study_id)
            page, more = await self._from_database(clinic_id, study_id, after, limit)
            if after is None and not more:
                await self._cache.put_study(clinic_id, study_id, page, seen)
        if not more or not page:
            return page, ""
        last = _key(page[-1])
        return page, encode_token("results", [last[0].isoformat(), last[1], study_id])

    async def _from_database(
        self, clinic_id: str, study_id: str, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[builtins.list[Result], bool]:
        keyset = None
        if after is not None:
            try:
                keyset = (after[0], uuid.UUID(after[1]))
            except ValueError:
                raise InvalidArgument.for_field("page_token", "is not a token") from None
        async with self._database.read_connection() as conn:
            rows = await store.list_results(conn, clinic_id, study_id, keyset, limit + 1)
        return [result_to_proto(r) for r in rows[:limit]], len(rows) > limit
