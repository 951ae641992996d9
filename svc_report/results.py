"""Reading the results a report presents: svc_infer's Redis cache first, then its read model.

The cache is svc_infer's, and its key format is a contract between the two services
(documented in README, "Reports"): `<MEDMESH_SUBJECT_ROOT>:infer:result:<result_id>` holds a
serialized `medmesh.infer.v1.Result`, TTL one hour. The Result message does not carry the
processed image's object key, so cached image results get theirs from
`infer.report_results` in one small query; everything else comes from the cache.

A cached result of another clinic is treated as a miss (and then not found in the clinic-
filtered view), so the cache never widens what a clinic can see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import cast

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gen.medmesh.common.v1 import AnalysisKind
from gen.medmesh.infer.v1 import Result
from medmesh.db import Database
from svc_report import read_store
from svc_report.model import AnalysisResult, Score

log = structlog.get_logger(__name__)


def result_cache_key(namespace: str, result_id: str) -> str:
    """The key svc_infer caches a result under (`svc_infer.cache.ResultCache.result_key`)."""
    return f"{namespace}:infer:result:{result_id}"


def result_from_proto(message: Result) -> AnalysisResult:
    """A cached `medmesh.infer.v1.Result` as a domain result (no processed key yet)."""
    image = message.image
    text = message.text
    urgency = text.urgency if text is not None else None
    return AnalysisResult(
        result_id=message.result_id,
        clinic_id=message.clinic_id,
        study_id=message.study.removeprefix("studies/"),
        file_id=message.file.rpartition("/files/")[2],
        kind=message.kind,
        model_name=message.model_name.removeprefix("models/"),
        model_version=int(message.model_version),
        preprocessing_version=message.preprocessing_version,
        create_time=message.create_time or datetime.fromtimestamp(0, UTC),
        top_k=tuple(Score(s.label, float(s.score)) for s in image.top_k) if image else (),
        findings=tuple(Score(s.label, float(s.score)) for s in text.findings) if text else (),
        urgency=Score(urgency.label, float(urgency.score)) if urgency is not None else None,
        summary=text.summary if text is not None else "",
        language=text.language if text is not None else "",
        model_languages=tuple(text.model_languages) if text is not None else (),
        outside_model_languages=bool(text.outside_model_languages) if text is not None else False,
        source="redis",
    )


class ResultSource:
    """Results by id for one clinic: Redis when cached, else PostgreSQL (read pool)."""

    def __init__(self, database: Database, redis: Redis, *, namespace: str) -> None:
        self._database = database
        self._redis = redis
        self._namespace = namespace

    async def _cached(self, clinic_id: str, result_ids: Sequence[str]) -> dict[str, AnalysisResult]:
        keys = [result_cache_key(self._namespace, rid) for rid in result_ids]
        try:
            # bytes: the client is made without decode_responses (medmesh/cache.py)
            values = cast("list[bytes | None]", await self._redis.mget(keys))
        except RedisError as exc:
            log.warning("result_cache.read_failed", error=str(exc))
            return {}
        found: dict[str, AnalysisResult] = {}
        for result_id, value in zip(result_ids, values, strict=True):
            if not value:
                continue
            try:
                result = result_from_proto(Result.FromString(value))
            except Exception as exc:  # noqa: BLE001 - a bad cache entry is a miss
                log.warning("result_cache.undecodable", result_id=result_id, error=str(exc))
                continue
            if result.clinic_id == clinic_id and result.result_id == result_id:
                found[result_id] = result
        return found

    async def load(self, clinic_id: str, result_ids: Sequence[str]) -> list[AnalysisResult]:
        """The clinic's results among `result_ids`, in the order given; unknown ids and other
        clinics' results are left out (the caller decides whether that is an error)."""
        wanted = list(dict.fromkeys(result_ids))
        found = await self._cached(clinic_id, wanted)
        missing = [rid for rid in wanted if rid not in found]
        cached_images = [
            rid for rid, r in found.items() if r.kind == AnalysisKind.IMAGE_CLASSIFICATION
        ]
        if missing or cached_images:
            async with self._database.read_connection() as conn:
                for row in await read_store.results_by_id(conn, clinic_id, missing):
                    found[row.result_id] = row
                keys = await read_store.processed_keys(conn, clinic_id, cached_images)
            for rid, key in keys.items():
                found[rid] = _with_key(found[rid], key)
        log.debug(
            "results.loaded",
            cached=len(wanted) - len(missing),
            from_postgres=len(missing),
            found=len(found),
        )
        return [found[rid] for rid in wanted if rid in found]


def _with_key(result: AnalysisResult, key: str) -> AnalysisResult:
    return replace(result, processed_key=key)
