"""svc_report's SQL on its own schema: reports (with their receipts) and processed events;
targets and deliveries are in `delivery_store.py`. Functions take a connection, so callers
decide the transaction; names are schema-qualified (`report.`) because service pools do not
set search_path. Every query that reads a clinic's data filters by clinic."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from gen.medmesh.report.v1 import DeliveryStatus, ReportStatus
from medmesh.db import Connection
from svc_report.model import Receipt, ReportRecord

_REPORT_COLUMNS = """
    report_id::text AS report_id, clinic_id, study_id, version, status, failure_reason,
    result_ids, requested_by, archive_key, sha256, size_bytes, delivery_status, create_time,
    ready_time, notified_at
"""


def _report(row: Mapping[str, Any], receipts: Sequence[Receipt] = ()) -> ReportRecord:
    return ReportRecord(
        report_id=row["report_id"],
        clinic_id=row["clinic_id"],
        study_id=row["study_id"],
        version=int(row["version"]),
        status=ReportStatus(row["status"]),
        failure_reason=row["failure_reason"],
        result_ids=tuple(row["result_ids"]),
        requested_by=row["requested_by"],
        archive_key=row["archive_key"],
        sha256=row["sha256"],
        size_bytes=int(row["size_bytes"]),
        delivery_status=DeliveryStatus(row["delivery_status"]),
        create_time=row["create_time"],
        ready_time=row["ready_time"],
        notified_at=row["notified_at"],
        html=row.get("html", ""),
        receipts=tuple(receipts),
    )


# ----------------------------------------------------------------------------- reports


async def live_report_for_set(
    conn: Connection, clinic_id: str, study_id: str, result_set: str
) -> ReportRecord | None:
    """The PENDING or READY report of exactly this result set, if any (the idempotency rule)."""
    cur = await conn.execute(
        f"SELECT {_REPORT_COLUMNS} FROM report.reports "  # noqa: S608 - constant columns
        "WHERE clinic_id = %s AND study_id = %s AND result_set = %s AND status <> %s",
        (clinic_id, study_id, result_set, int(ReportStatus.FAILED)),
    )
    row = await cur.fetchone()
    return _report(row) if row else None


async def lock_study_reports(conn: Connection, study_id: str) -> None:
    """Serialise version numbering of one study (transaction-scoped advisory lock)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('report.study:' || %s, 0))", (study_id,)
    )


async def insert_pending_report(
    conn: Connection,
    *,
    clinic_id: str,
    study_id: str,
    result_ids: Sequence[str],
    result_set: str,
    requested_by: str,
) -> ReportRecord:
    """A new PENDING version (max + 1) of the study's report."""
    cur = await conn.execute(
        f"""
        INSERT INTO report.reports
            (report_id, clinic_id, study_id, version, status, result_ids, result_set,
             requested_by)
        SELECT %s, %s, %s, coalesce(max(version), 0) + 1, %s, %s, %s, %s
        FROM report.reports WHERE study_id = %s
        RETURNING {_REPORT_COLUMNS}
        """,  # noqa: S608 - constant columns
        (
            uuid.uuid4(),
            clinic_id,
            study_id,
            int(ReportStatus.PENDING),
            list(result_ids),
            result_set,
            requested_by,
            study_id,
        ),
    )
    row = await cur.fetchone()
    assert row is not None  # INSERT ... RETURNING returns the row
    return _report(row)


async def retry_failed_report(conn: Connection, report_id: str, requested_by: str) -> ReportRecord:
    """Put a FAILED report back to PENDING (same id and version) for another attempt."""
    cur = await conn.execute(
        f"""
        UPDATE report.reports SET status = %s, failure_reason = '', requested_by = %s,
            update_time = now()
        WHERE report_id = %s RETURNING {_REPORT_COLUMNS}
        """,  # noqa: S608 - constant columns
        (int(ReportStatus.PENDING), requested_by, report_id),
    )
    row = await cur.fetchone()
    assert row is not None
    return _report(row)


async def failed_report_for_set(
    conn: Connection, clinic_id: str, study_id: str, result_set: str
) -> str | None:
    """The newest FAILED report of this result set (to retry instead of adding a version)."""
    cur = await conn.execute(
        "SELECT report_id::text AS report_id FROM report.reports "
        "WHERE clinic_id = %s AND study_id = %s AND result_set = %s AND status = %s "
        "ORDER BY version DESC LIMIT 1",
        (clinic_id, study_id, result_set, int(ReportStatus.FAILED)),
    )
    row = await cur.fetchone()
    return row["report_id"] if row else None


async def get_report(
    conn: Connection, clinic_id: str, report_id: str, *, with_html: bool = False, lock: bool = False
) -> ReportRecord | None:
    """One report of the clinic with its receipts, or None."""
    columns = _REPORT_COLUMNS + (", html" if with_html else "")
    cur = await conn.execute(
        f"SELECT {columns} FROM report.reports WHERE clinic_id = %s AND report_id = %s"  # noqa: S608 - constant columns
        + (" FOR UPDATE" if lock else ""),
        (clinic_id, report_id),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return _report(row, await _receipts(conn, report_id))


async def _receipts(conn: Connection, report_id: str) -> list[Receipt]:
    return (await receipts_of(conn, [report_id])).get(report_id, [])


async def receipts_of(conn: Connection, report_ids: Sequence[str]) -> dict[str, list[Receipt]]:
    """Receipts of these reports, oldest first, by report id."""
    if not report_ids:
        return {}
    cur = await conn.execute(
        """
        SELECT report_id::text AS report_id, attempt_time, http_status, mis_id, error,
               idempotency_key
        FROM report.delivery_receipts WHERE report_id = ANY(%s::uuid[]) ORDER BY id
        """,
        (list(report_ids),),
    )
    found: dict[str, list[Receipt]] = {}
    for r in await cur.fetchall():
        found.setdefault(r["report_id"], []).append(
            Receipt(
                r["attempt_time"], r["http_status"], r["mis_id"], r["error"], r["idempotency_key"]
            )
        )
    return found


async def list_reports(
    conn: Connection,
    clinic_id: str,
    *,
    study_id: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[ReportRecord]:
    """The clinic's reports, newest first, keyset-paged after (create_time, report_id)."""
    clauses = ["clinic_id = %s"]
    params: list[Any] = [clinic_id]
    if study_id is not None:
        clauses.append("study_id = %s")
        params.append(study_id)
    if after is not None:
        clauses.append("(create_time, report_id) < (%s, %s::uuid)")
        params.extend(after)
    cur = await conn.execute(
        f"SELECT {_REPORT_COLUMNS} FROM report.reports WHERE "  # noqa: S608 - constant SQL
        + " AND ".join(clauses)
        + " ORDER BY create_time DESC, report_id DESC LIMIT %s",
        (*params, limit),
    )
    rows = await cur.fetchall()
    receipts = await receipts_of(conn, [r["report_id"] for r in rows])
    return [_report(r, receipts.get(r["report_id"], ())) for r in rows]


async def mark_ready(
    conn: Connection,
    report_id: str,
    *,
    html: str,
    archive_key: str,
    sha256: str,
    size_bytes: int,
    delivery_status: DeliveryStatus,
) -> None:
    """The report is rendered and archived."""
    await conn.execute(
        """
        UPDATE report.reports SET status = %s, html = %s, archive_key = %s, sha256 = %s,
            size_bytes = %s, delivery_status = %s, ready_time = now(), update_time = now()
        WHERE report_id = %s
        """,
        (
            int(ReportStatus.READY),
            html,
            archive_key,
            sha256,
            size_bytes,
            int(delivery_status),
            report_id,
        ),
    )


async def mark_failed(conn: Connection, report_id: str, reason: str) -> None:
    """Generation failed its last attempt."""
    await conn.execute(
        "UPDATE report.reports SET status = %s, failure_reason = %s, update_time = now() "
        "WHERE report_id = %s AND status = %s",
        (int(ReportStatus.FAILED), reason[:1000], report_id, int(ReportStatus.PENDING)),
    )


async def mark_notified(conn: Connection, report_id: str, error: str) -> None:
    """The "report ready" mail went out (error empty) or was given up on."""
    await conn.execute(
        "UPDATE report.reports SET notified_at = now(), notify_error = %s WHERE report_id = %s",
        (error[:1000], report_id),
    )


async def set_delivery_status(conn: Connection, report_id: str, status: DeliveryStatus) -> None:
    """The report's delivery status (the latest delivery's)."""
    await conn.execute(
        "UPDATE report.reports SET delivery_status = %s, update_time = now() WHERE report_id = %s",
        (int(status), report_id),
    )


async def mark_event_processed(conn: Connection, event_id: str) -> bool:
    """Record an applied event; False when it was applied before (a redelivery)."""
    cur = await conn.execute(
        "INSERT INTO report.processed_events (event_id) VALUES (%s) ON CONFLICT DO NOTHING",
        (event_id,),
    )
    return cur.rowcount == 1


async def reopen_failed_report(conn: Connection, clinic_id: str, report_id: str) -> bool:
    """Put a FAILED report back to PENDING (a replayed dead letter); True when it was FAILED."""
    cur = await conn.execute(
        "UPDATE report.reports SET status = %s, failure_reason = '', update_time = now() "
        "WHERE report_id = %s AND clinic_id = %s AND status = %s RETURNING report_id",
        (int(ReportStatus.PENDING), report_id, clinic_id, int(ReportStatus.FAILED)),
    )
    return await cur.fetchone() is not None
