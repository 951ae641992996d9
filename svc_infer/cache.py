"""The Redis cache of results (TTL one hour by default): GetResult and ListResults read it
first and fall back to PostgreSQL (the replica when configured).

Values are serialized `Result` / `ListResultsResponse` messages. The cache is an optimisation,
never the record: a Redis outage makes reads go to PostgreSQL and writes skip the cache (both
logged), it never fails a job or an RPC.

A study's cached list must never hide a stored result. Writers bump the study's version
counter and drop the list after their commit; a reader notes the counter before reading
PostgreSQL and caches what it read only if the counter has not moved (WATCH/MULTI), so a list
read before a concurrent write is not put back after it.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from gen.medmesh.infer.v1 import ListResultsResponse, Result

log = structlog.get_logger(__name__)

# A study list is cached whole only while it is this short; longer ones page from PostgreSQL.
MAX_CACHED_LIST = 500


class ResultCache:
    """Result messages by id and whole result lists by study, under `<namespace>:infer:`."""

    def __init__(self, redis: Redis, *, namespace: str, ttl_s: int = 3600) -> None:
        self._redis = redis
        self._prefix = f"{namespace}:infer"
        self.ttl_s = ttl_s

    def result_key(self, result_id: str) -> str:
        """The key of one cached result."""
        return f"{self._prefix}:result:{result_id}"

    def study_key(self, clinic_id: str, study_id: str) -> str:
        """The key of a study's cached result list as one clinic sees it (another clinic's
        empty view of the study must never be served to its owner)."""
        return f"{self._prefix}:study-results:{clinic_id}:{study_id}"

    def version_key(self, study_id: str) -> str:
        """The key of a study's write counter."""
        return f"{self._prefix}:study-version:{study_id}"

    async def get_result(self, result_id: str) -> Result | None:
        """A cached result, or None (missing, or Redis unavailable)."""
        try:
            data = await self._redis.get(self.result_key(result_id))
        except RedisError as exc:
            log.warning("result_cache.read_failed", error=str(exc))
            return None
        return Result.FromString(data) if data else None

    async def put_results(self, results: Sequence[Result], *, stored: bool = True) -> None:
        """Cache results with the TTL. `stored`: they were just stored, so their studies'
        cached lists are dropped and the studies' write counters move (see the module
        docstring); a read-through of an old result leaves the lists alone."""
        if not results:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for result in results:
                    pipe.set(self.result_key(result.result_id), bytes(result), ex=self.ttl_s)
                    if stored:
                        study_id = result.study.removeprefix("studies/")
                        pipe.incr(self.version_key(study_id))
                        pipe.expire(self.version_key(study_id), self.ttl_s)
                        pipe.delete(self.study_key(result.clinic_id, study_id))
                await pipe.execute()
        except RedisError as exc:
            log.warning("result_cache.write_failed", error=str(exc))

    async def get_study(self, clinic_id: str, study_id: str) -> list[Result] | None:
        """A study's cached result list (oldest first), or None."""
        try:
            data = await self._redis.get(self.study_key(clinic_id, study_id))
        except RedisError as exc:
            log.warning("result_cache.read_failed", error=str(exc))
            return None
        return list(ListResultsResponse.FromString(data).results) if data is not None else None

    async def study_version(self, study_id: str) -> bytes | None:
        """The study's write counter, read before a PostgreSQL read that may be cached."""
        try:
            return await self._redis.get(self.version_key(study_id))
        except RedisError as exc:
            log.warning("result_cache.read_failed", error=str(exc))
            return None

    async def put_study(
        self, clinic_id: str, study_id: str, results: Sequence[Result], seen: bytes | None
    ) -> None:
        """Cache a study's complete result list, unless a result was stored since the reader
        saw the counter `seen` (or the list is long)."""
        if len(results) > MAX_CACHED_LIST:
            return
        payload = bytes(ListResultsResponse(results=list(results)))
        version_key = self.version_key(study_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                await pipe.watch(version_key)
                if await pipe.get(version_key) != seen:
                    return
                pipe.multi()
                pipe.set(self.study_key(clinic_id, study_id), payload, ex=self.ttl_s)
                await pipe.execute()
        except WatchError:
            return  # a result was stored meanwhile; the next reader caches the longer list
        except RedisError as exc:
            log.warning("result_cache.write_failed", error=str(exc))
