"""SQL against the read models other services publish for svc_report: `ingest.report_studies`,
`ingest.report_files`, `infer.report_results`, `auth.report_recipients`.

These views are contracts (each owner's `migrations/0090.read-model-for-report.sql`);
svc_report never reads another schema's tables. Every query filters by clinic. Callers pass
a connection from `Database.read_connection()`, so reads go to the replica when configured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gen.medmesh.common.v1 import AnalysisKind, FileKind
from medmesh.db import Connection
from svc_report.model import AnalysisResult, Recipient, Score, Study, StudyFile

# Statuses (medmesh.ingest.v1.FileStatus) of files that will still get a result.
FILE_STATUSES_IN_ANALYSIS = (2, 3, 4)  # STORED, QUEUED, ANALYSING
# Statuses of files that never will: pending upload, failed, rejected.
FILE_STATUSES_WITHOUT_RESULT = (1, 6, 7)


async def get_study(conn: Connection, clinic_id: str, study_id: str) -> Study | None:
    """The study, or None when it does not exist or belongs to another clinic."""
    cur = await conn.execute(
        """
        SELECT study_id, clinic_id, patient_ref, description, create_time
        FROM ingest.report_studies WHERE clinic_id = %s AND study_id = %s
        """,
        (clinic_id, study_id),
    )
    row = await cur.fetchone()
    return Study(**row) if row else None


async def study_files(conn: Connection, clinic_id: str, study_id: str) -> list[StudyFile]:
    """The study's files, oldest first."""
    cur = await conn.execute(
        """
        SELECT file_id, kind, file_name, content_type, status, create_time
        FROM ingest.report_files WHERE clinic_id = %s AND study_id = %s
        ORDER BY create_time, file_id
        """,
        (clinic_id, study_id),
    )
    return [
        StudyFile(
            file_id=r["file_id"],
            kind=FileKind(r["kind"]),
            file_name=r["file_name"],
            content_type=r["content_type"],
            status=int(r["status"]),
            create_time=r["create_time"],
        )
        for r in await cur.fetchall()
    ]


def _scores(items: Sequence[Mapping[str, Any]] | None) -> tuple[Score, ...]:
    return tuple(Score(str(i["label"]), float(i["score"])) for i in items or ())


def result_from_row(row: Mapping[str, Any]) -> AnalysisResult:
    """A `report_results` row (its `analysis` JSON decoded by psycopg) as a domain result."""
    analysis = row["analysis"] or {}
    urgency = analysis.get("urgency")
    return AnalysisResult(
        result_id=row["result_id"],
        clinic_id=row["clinic_id"],
        study_id=row["study_id"],
        file_id=row["file_id"],
        kind=AnalysisKind(row["kind"]),
        model_name=row["model_name"],
        model_version=int(row["model_version"]),
        preprocessing_version=row["preprocessing_version"],
        create_time=row["create_time"],
        top_k=_scores(analysis.get("top_k")),
        findings=_scores(analysis.get("findings")),
        urgency=Score(str(urgency["label"]), float(urgency["score"])) if urgency else None,
        summary=str(analysis.get("summary", "")),
        language=str(analysis.get("language", "")),
        model_languages=tuple(str(c) for c in analysis.get("model_languages", ())),
        outside_model_languages=bool(analysis.get("outside_model_languages", False)),
        processed_key=row["processed_key"],
    )


_RESULT_COLUMNS = """
    result_id, clinic_id, study_id, file_id, kind, model_name, model_version,
    preprocessing_version, analysis, processed_key, create_time
"""


async def results_by_id(
    conn: Connection, clinic_id: str, result_ids: Sequence[str]
) -> list[AnalysisResult]:
    """The clinic's results among `result_ids` (others' and unknown ids are left out)."""
    if not result_ids:
        return []
    cur = await conn.execute(
        f"SELECT {_RESULT_COLUMNS} FROM infer.report_results "  # noqa: S608 - constant columns
        "WHERE clinic_id = %s AND result_id = ANY(%s)",
        (clinic_id, list(result_ids)),
    )
    return [result_from_row(r) for r in await cur.fetchall()]


async def processed_keys(
    conn: Connection, clinic_id: str, result_ids: Sequence[str]
) -> dict[str, str]:
    """result id → processed image key, for results read from the cache (the cached Result
    message does not carry the key)."""
    if not result_ids:
        return {}
    cur = await conn.execute(
        "SELECT result_id, processed_key FROM infer.report_results "
        "WHERE clinic_id = %s AND result_id = ANY(%s)",
        (clinic_id, list(result_ids)),
    )
    return {r["result_id"]: r["processed_key"] for r in await cur.fetchall()}


async def latest_result_ids(conn: Connection, clinic_id: str, study_id: str) -> list[str]:
    """The newest result of each file of the study (GenerateReport's "current results")."""
    cur = await conn.execute(
        """
        SELECT DISTINCT ON (file_id) file_id, result_id
        FROM infer.report_results WHERE clinic_id = %s AND study_id = %s
        ORDER BY file_id, create_time DESC, result_id DESC
        """,
        (clinic_id, study_id),
    )
    return [r["result_id"] for r in await cur.fetchall()]


async def recipients(conn: Connection, clinic_id: str) -> list[Recipient]:
    """The clinic's verified, enabled clinicians and admins."""
    cur = await conn.execute(
        "SELECT email, display_name FROM auth.report_recipients WHERE clinic_id = %s "
        "ORDER BY email",
        (clinic_id,),
    )
    return [Recipient(r["email"], r["display_name"]) for r in await cur.fetchall()]
