"""The Redis cache of results (TTL one hour by default): GetResult and ListResults read it
first and fall back to PostgreSQL (the replica when configured).

Values are serialized `Result` / `ListResultsResponse` messages. The cache is an optimisation,
never the record: a Redis outage makes reads go to PostgreSQL and writes skip the cache (both
logged), it never fails a job or an RPC.

A study's cached list must never hide a stored result. Writers bump the study's version
counter and drop the list after their commit; a reader notes the counter before reading
PostgreSQL and caches what it read only if the counter has not moved (WATCH/MULTI), so a list
read before a concurrent write is not put back after it.

A writer that cannot reach Redis owes the study that invalidation: Redis keeps its data
through a restart (AOF), so the list cached before the outage would come back hiding the
result stored during it. The owed invalidations are kept in the process and settled before
any other cache call once Redis answers again; until then this process reads those studies
from PostgreSQL. (Another replica may serve such a list between Redis's return and the
owner's next cache call; a writer that dies during the outage leaves it to the TTL.)

Every cache call is bounded (`OP_TIMEOUT_S`, 1 s): a Redis that hangs (paused, partitioned)
costs a read at most that before it goes to PostgreSQL, like a Redis that refuses.

Reads are counted in `medmesh_infer_result_cache_reads_total{read, outcome}` (outcome
`hit`, `miss` or `unavailable`, the last also a miss served from PostgreSQL).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import cast

import structlog
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from gen.medmesh.infer.v1 import ListResultsResponse, Result

log = structlog.get_logger(__name__)

# A study list is cached whole only while it is this short; longer ones page from PostgreSQL.
MAX_CACHED_LIST = 500

# A cache call that fails or takes longer than its bound counts as "Redis unavailable".
_UNAVAILABLE = (RedisError, TimeoutError)
OP_TIMEOUT_S = 1.0
"""The most one cache call may take (a hung Redis would otherwise hold a read for the
client's socket timeout times its retries, 2 s x 4, twice per GetResult)."""

CACHE_READS = Counter(
    "medmesh_infer_result_cache_reads_total",
    "Result cache reads by what they read (result, study) and outcome (hit, miss, unavailable).",
    ["read", "outcome"],
)


class ResultCache:
    """Result messages by id and whole result lists by study, under `<namespace>:infer:`."""

    def __init__(
        self,
        redis: Redis,
        *,
        namespace: str,
        ttl_s: int = 3600,
        op_timeout_s: float = OP_TIMEOUT_S,
    ) -> None:
        self._redis = redis
        self._prefix = f"{namespace}:infer"
        self.ttl_s = ttl_s
        self._op_timeout_s = op_timeout_s
        self.owed: set[tuple[str, str]] = set()
        """(clinic, study) whose list invalidation failed (Redis down), to be settled."""

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

    @asynccontextmanager
    async def _bounded(self) -> AsyncIterator[None]:
        """At most `op_timeout_s` for the block (TimeoutError past it)."""
        async with asyncio.timeout(self._op_timeout_s):
            yield

    async def _settle_owed(self) -> bool:
        """Apply the invalidations owed since Redis was last unreachable; False while it
        still is."""
        if not self.owed:
            return True
        owed = list(self.owed)
        try:
            async with self._bounded(), self._redis.pipeline(transaction=False) as pipe:
                for clinic_id, study_id in owed:
                    pipe.incr(self.version_key(study_id))
                    pipe.expire(self.version_key(study_id), self.ttl_s)
                    pipe.delete(self.study_key(clinic_id, study_id))
                await pipe.execute()
        except _UNAVAILABLE as exc:
            log.warning(
                "result_cache.invalidation_owed",
                studies=len(owed),
                error=str(exc) or type(exc).__name__,
            )
            return False
        self.owed.difference_update(owed)
        log.info("result_cache.invalidation_settled", studies=len(owed))
        return True

    async def get_result(self, result_id: str) -> Result | None:
        """A cached result, or None (missing, or Redis unavailable)."""
        try:
            await self._settle_owed()
            async with self._bounded():
                # bytes: the client is made without decode_responses (medmesh/cache.py)
                data = cast("bytes | None", await self._redis.get(self.result_key(result_id)))
        except _UNAVAILABLE as exc:
            log.warning("result_cache.read_failed", error=str(exc) or type(exc).__name__)
            CACHE_READS.labels("result", "unavailable").inc()
            return None
        CACHE_READS.labels("result", "hit" if data else "miss").inc()
        return Result.FromString(data) if data else None

    async def put_results(self, results: Sequence[Result], *, stored: bool = True) -> None:
        """Cache results with the TTL. `stored`: they were just stored, so their studies'
        cached lists are dropped and the studies' write counters move (see the module
        docstring); a read-through of an old result leaves the lists alone."""
        if not results:
            return
        studies = {(r.clinic_id, r.study.removeprefix("studies/")) for r in results}
        try:
            await self._settle_owed()
            async with self._bounded(), self._redis.pipeline(transaction=False) as pipe:
                for result in results:
                    pipe.set(self.result_key(result.result_id), bytes(result), ex=self.ttl_s)
                    if stored:
                        study_id = result.study.removeprefix("studies/")
                        pipe.incr(self.version_key(study_id))
                        pipe.expire(self.version_key(study_id), self.ttl_s)
                        pipe.delete(self.study_key(result.clinic_id, study_id))
                await pipe.execute()
        except _UNAVAILABLE as exc:
            log.warning("result_cache.write_failed", error=str(exc) or type(exc).__name__)
            if stored:
                self.owed.update(studies)

    async def get_study(self, clinic_id: str, study_id: str) -> list[Result] | None:
        """A study's cached result list (oldest first), or None."""
        try:
            settled = await self._settle_owed()
            if not settled and (clinic_id, study_id) in self.owed:
                CACHE_READS.labels("study", "unavailable").inc()
                return None
            async with self._bounded():
                data = cast(
                    "bytes | None", await self._redis.get(self.study_key(clinic_id, study_id))
                )
        except _UNAVAILABLE as exc:
            log.warning("result_cache.read_failed", error=str(exc) or type(exc).__name__)
            CACHE_READS.labels("study", "unavailable").inc()
            return None
        CACHE_READS.labels("study", "miss" if data is None else "hit").inc()
        return list(ListResultsResponse.FromString(data).results) if data is not None else None

    async def study_version(self, study_id: str) -> bytes | None:
        """The study's write counter, read before a PostgreSQL read that may be cached."""
        try:
            async with self._bounded():
                return cast("bytes | None", await self._redis.get(self.version_key(study_id)))
        except _UNAVAILABLE as exc:
            log.warning("result_cache.read_failed", error=str(exc) or type(exc).__name__)
            return None

    async def put_study(
        self, clinic_id: str, study_id: str, results: Sequence[Result], seen: bytes | None
    ) -> None:
        """Cache a study's complete result list, unless a result was stored since the reader
        saw the counter `seen` (or the list is long)."""
        if len(results) > MAX_CACHED_LIST or (clinic_id, study_id) in self.owed:
            return
        payload = bytes(ListResultsResponse(results=list(results)))
        version_key = self.version_key(study_id)
        try:
            async with self._bounded(), self._redis.pipeline(transaction=True) as pipe:
                await pipe.watch(version_key)
                if await pipe.get(version_key) != seen:
                    return
                pipe.multi()
                pipe.set(self.study_key(clinic_id, study_id), payload, ex=self.ttl_s)
                await pipe.execute()
        except WatchError:
            return  # a result was stored meanwhile; the next reader caches the longer list
        except _UNAVAILABLE as exc:
            log.warning("result_cache.write_failed", error=str(exc) or type(exc).__name__)
