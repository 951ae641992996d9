"""svc_infer's SQL for results and study progress (job failures and dead letters are in
`dead_letter_store.py`, the registry's in `registry_store.py`). Functions take a connection,
so callers decide the transaction; names are schema-qualified (`infer.`) because service pools
do not set search_path. Every query that reads results filters by clinic."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from gen.medmesh.common.v1 import AnalysisKind
from gen.medmesh.infer.v1 import TrafficArm
from medmesh.db import Connection
from svc_infer.results import ResultDraft, StoredResult, StudyProgress, Timings

# ----------------------------------------------------------------------------- results


def _stored(row: Mapping[str, Any]) -> StoredResult:
    draft = ResultDraft(
        job_id=row["job_id"],
        clinic_id=row["clinic_id"],
        study_id=row["study_id"],
        file_id=row["file_id"],
        kind=AnalysisKind(row["kind"]),
        model_name=row["model_name"],
        model_version=int(row["model_version"]),
        preprocessing_version=row["preprocessing_version"],
        arm=TrafficArm(row["arm"]),
        analysis=row["analysis"],
        processed_key=row["processed_key"],
        timings=Timings(
            row["queue_ms"], row["preprocess_ms"], row["inference_ms"], row["total_ms"]
        ),
    )
    return StoredResult(str(row["result_id"]), draft, row["create_time"])


ResultKey = tuple[str, str, int]
"""(file id, model name, model version): what makes a result unique."""


async def existing_results(conn: Connection, keys: Iterable[ResultKey]) -> dict[ResultKey, str]:
    """The result ids already stored for these keys (a redelivered job finds its own)."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    cur = await conn.execute(
        """
        SELECT r.file_id, r.model_name, r.model_version, r.result_id
        FROM infer.results r
        JOIN unnest(%s::text[], %s::text[], %s::bigint[]) AS k(file_id, model_name, version)
          ON r.file_id = k.file_id AND r.model_name = k.model_name
         AND r.model_version = k.version
        """,
        ([k[0] for k in wanted], [k[1] for k in wanted], [k[2] for k in wanted]),
    )
    return {
        (r["file_id"], r["model_name"], int(r["model_version"])): str(r["result_id"])
        for r in await cur.fetchall()
    }


_RESULT_COLUMNS = """
    result_id, job_id, clinic_id, study_id, file_id, kind, model_name, model_version,
    preprocessing_version, arm, analysis, processed_key,
    queue_ms, preprocess_ms, inference_ms, total_ms"""


async def insert_results(conn: Connection, drafts: Sequence[ResultDraft]) -> list[StoredResult]:
    """Store results in one statement; a draft whose file + model version has a result
    already (a redelivery) is skipped (idempotent). Returns the new rows in draft order."""
    if not drafts:
        return []
    columns: list[list[Any]] = [[] for _ in range(16)]
    for draft in drafts:
        t = draft.timings
        row = (
            uuid.uuid4(),
            draft.job_id,
            draft.clinic_id,
            draft.study_id,
            draft.file_id,
            int(draft.kind),
            draft.model_name,
            draft.model_version,
            draft.preprocessing_version,
            int(draft.arm),
            Jsonb(dict(draft.analysis)),
            draft.processed_key,
            t.queue_ms,
            t.preprocess_ms,
            t.inference_ms,
            t.total_ms,
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    cur = await conn.execute(
        f"""
        INSERT INTO infer.results ({_RESULT_COLUMNS})
        SELECT {_RESULT_COLUMNS} FROM unnest(
            %s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[], %s::smallint[],
            %s::text[], %s::bigint[], %s::text[], %s::smallint[], %s::jsonb[], %s::text[],
            %s::float8[], %s::float8[], %s::float8[], %s::float8[]) WITH ORDINALITY
            AS r({_RESULT_COLUMNS}, position)
        ORDER BY position
        ON CONFLICT ON CONSTRAINT results_one_per_file_and_version DO NOTHING
        RETURNING *
        """,  # noqa: S608 - the column list is a constant
        columns,
    )
    stored = {
        (r["file_id"], r["model_name"], int(r["model_version"])): r for r in await cur.fetchall()
    }
    ordered = []
    for draft in drafts:
        inserted = stored.pop((draft.file_id, draft.model_name, draft.model_version), None)
        if inserted is not None:
            ordered.append(_stored(inserted))
    return ordered


async def get_result(
    conn: Connection, clinic_id: str, study_id: str, result_id: uuid.UUID
) -> StoredResult | None:
    """One result of the clinic's study."""
    cur = await conn.execute(
        "SELECT * FROM infer.results WHERE result_id = %s AND clinic_id = %s AND study_id = %s",
        (result_id, clinic_id, study_id),
    )
    row = await cur.fetchone()
    return _stored(row) if row else None


async def list_results(
    conn: Connection,
    clinic_id: str,
    study_id: str,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[StoredResult]:
    """A study's results by (create_time, result_id), after the keyset `after`."""
    if after is None:
        cur = await conn.execute(
            """
            SELECT * FROM infer.results WHERE clinic_id = %s AND study_id = %s
            ORDER BY create_time, result_id LIMIT %s
            """,
            (clinic_id, study_id, limit),
        )
    else:
        cur = await conn.execute(
            """
            SELECT * FROM infer.results WHERE clinic_id = %s AND study_id = %s
              AND (create_time, result_id) > (%s, %s)
            ORDER BY create_time, result_id LIMIT %s
            """,
            (clinic_id, study_id, after[0], after[1], limit),
        )
    return [_stored(r) for r in await cur.fetchall()]


@dataclass(frozen=True)
class SeenJob:
    """A job as the study bookkeeping needs it."""

    clinic_id: str
    study_id: str
    file_id: str
    kind: int
    job_id: str
    study_file_count: int


async def note_jobs_seen(conn: Connection, jobs: Sequence[SeenJob]) -> None:
    """Remember the files of each study that jobs were seen for, and the largest announced
    file count, in two statements. Studies are locked in id order, as `lock_studies` does
    (no deadlocks)."""
    studies: dict[str, tuple[str, int]] = {}
    files: dict[tuple[str, str], SeenJob] = {}
    for job in sorted(jobs, key=lambda j: (j.study_id, j.file_id)):
        clinic_id, expected = studies.get(job.study_id, (job.clinic_id, 0))
        studies[job.study_id] = (clinic_id, max(expected, job.study_file_count))
        files.setdefault((job.study_id, job.file_id), job)
    if not studies:
        return
    await conn.execute(
        """
        INSERT INTO infer.studies (study_id, clinic_id, expected_files)
        SELECT * FROM unnest(%s::text[], %s::text[], %s::int[]) ORDER BY 1
        ON CONFLICT (study_id) DO UPDATE
        SET expected_files = GREATEST(infer.studies.expected_files, EXCLUDED.expected_files)
        """,
        (list(studies), [c for c, _ in studies.values()], [n for _, n in studies.values()]),
    )
    await conn.execute(
        """
        INSERT INTO infer.study_files (study_id, file_id, kind, job_id)
        SELECT * FROM unnest(%s::text[], %s::text[], %s::smallint[], %s::text[]) ORDER BY 1, 2
        ON CONFLICT (study_id, file_id) DO NOTHING
        """,
        (
            [j.study_id for j in files.values()],
            [j.file_id for j in files.values()],
            [j.kind for j in files.values()],
            [j.job_id for j in files.values()],
        ),
    )


async def lock_studies(conn: Connection, study_ids: Iterable[str]) -> dict[str, StudyProgress]:
    """Lock the studies' rows (in id order) and read how far each is (see
    results.StudyProgress); unknown studies are absent. Two statements for any number."""
    wanted = sorted(set(study_ids))
    if not wanted:
        return {}
    cur = await conn.execute(
        "SELECT study_id, expected_files, announced_results FROM infer.studies "
        "WHERE study_id = ANY(%s::text[]) ORDER BY study_id FOR UPDATE",
        (wanted,),
    )
    studies = {r["study_id"]: r for r in await cur.fetchall()}
    if not studies:
        return {}
    cur = await conn.execute(
        """
        SELECT f.study_id, f.file_id, latest.result_id
        FROM infer.study_files f
        LEFT JOIN LATERAL (
            SELECT r.result_id FROM infer.results r
            WHERE r.study_id = f.study_id AND r.file_id = f.file_id
            ORDER BY r.create_time DESC, r.result_id DESC LIMIT 1
        ) latest ON true
        WHERE f.study_id = ANY(%s::text[])
        ORDER BY f.study_id, f.seen_time, f.file_id
        """,
        (list(studies),),
    )
    files: dict[str, list[Any]] = {study_id: [] for study_id in studies}
    for row in await cur.fetchall():
        files[row["study_id"]].append(row["result_id"])
    return {
        study_id: StudyProgress(
            expected_files=int(study["expected_files"]),
            announced_results=int(study["announced_results"]),
            seen_files=len(files[study_id]),
            result_ids=tuple(str(r) for r in files[study_id] if r is not None),
        )
        for study_id, study in studies.items()
    }


async def mark_studies_announced(conn: Connection, announced: Mapping[str, int]) -> None:
    """Record that StudyResultsReady went out for each study with that many results."""
    if not announced:
        return
    await conn.execute(
        """
        UPDATE infer.studies s SET announced_results = a.results, announce_time = now()
        FROM unnest(%s::text[], %s::int[]) AS a(study_id, results)
        WHERE s.study_id = a.study_id
        """,
        (list(announced), list(announced.values())),
    )
