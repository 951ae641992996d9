"""svc_report's SQL for delivery targets, deliveries and their receipts (reports themselves
are in `store.py`). Functions take a connection, so callers decide the transaction; names are
schema-qualified; every read filters by clinic."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gen.medmesh.report.v1 import DeliveryStatus
from medmesh.db import Connection
from svc_report.model import Delivery, DeliveryTargetRecord, Receipt, ReportRecord
from svc_report.store import set_delivery_status

# ----------------------------------------------------------------------------- targets


def _target(row: Mapping[str, Any]) -> DeliveryTargetRecord:
    sealed = row["bearer_token_sealed"]
    return DeliveryTargetRecord(
        clinic_id=row["clinic_id"],
        fhir_base_url=row["fhir_base_url"],
        bearer_token_sealed=bytes(sealed) if sealed is not None else None,
        enabled=row["enabled"],
        notify_emails=tuple(row["notify_emails"]),
        update_time=row["update_time"],
    )


async def get_target(
    conn: Connection, clinic_id: str, *, lock: bool = False
) -> DeliveryTargetRecord | None:
    """The clinic's delivery target, or None (`lock`: FOR UPDATE, in a transaction)."""
    cur = await conn.execute(
        "SELECT * FROM report.delivery_targets WHERE clinic_id = %s"  # noqa: S608 - constant
        + (" FOR UPDATE" if lock else ""),
        (clinic_id,),
    )
    row = await cur.fetchone()
    return _target(row) if row else None


async def upsert_target(
    conn: Connection,
    clinic_id: str,
    *,
    fhir_base_url: str,
    bearer_token_sealed: bytes | None,
    enabled: bool,
    notify_emails: Sequence[str],
    updated_by: str,
) -> DeliveryTargetRecord:
    """Create or replace the target. `bearer_token_sealed` None keeps the stored token only
    while the URL stays the same: a token is a credential for one MIS, and must not follow
    the reports to a new address nobody gave it for."""
    cur = await conn.execute(
        """
        INSERT INTO report.delivery_targets AS t
            (clinic_id, fhir_base_url, bearer_token_sealed, enabled, notify_emails, updated_by)
        VALUES (%(clinic)s, %(url)s, %(sealed)s, %(enabled)s, %(emails)s, %(by)s)
        ON CONFLICT (clinic_id) DO UPDATE SET
            fhir_base_url = excluded.fhir_base_url,
            bearer_token_sealed = CASE
                WHEN %(sealed)s::bytea IS NOT NULL THEN %(sealed)s::bytea
                WHEN t.fhir_base_url = excluded.fhir_base_url THEN t.bearer_token_sealed
                ELSE NULL END,
            bearer_token = '',
            enabled = excluded.enabled,
            notify_emails = excluded.notify_emails,
            updated_by = excluded.updated_by,
            update_time = now()
        RETURNING *
        """,
        {
            "clinic": clinic_id,
            "url": fhir_base_url,
            "sealed": bearer_token_sealed,
            "enabled": enabled,
            "emails": list(notify_emails),
            "by": updated_by,
        },
    )
    row = await cur.fetchone()
    assert row is not None
    return _target(row)


async def seal_plaintext_tokens(conn: Connection, seal: Callable[[str], bytes]) -> int:
    """Encrypt tokens stored in plain text before migration 0003 (and blank them): run at
    start-up, under row locks, so it is safe with several replicas. Returns how many."""
    cur = await conn.execute(
        "SELECT clinic_id, bearer_token FROM report.delivery_targets "
        "WHERE bearer_token <> '' FOR UPDATE"
    )
    rows = await cur.fetchall()
    for row in rows:
        await conn.execute(
            "UPDATE report.delivery_targets SET bearer_token_sealed = %s, bearer_token = '' "
            "WHERE clinic_id = %s",
            (seal(row["bearer_token"]), row["clinic_id"]),
        )
    return len(rows)


# ----------------------------------------------------------------------------- deliveries


def _delivery(row: Mapping[str, Any]) -> Delivery:
    return Delivery(
        delivery_id=row["delivery_id"],
        report_id=row["report_id"],
        clinic_id=row["clinic_id"],
        idempotency_key=row["idempotency_key"],
        redelivery=row["redelivery"],
        status=DeliveryStatus(row["status"]),
    )


_DELIVERY_COLUMNS = """
    delivery_id::text AS delivery_id, report_id::text AS report_id, clinic_id, idempotency_key,
    redelivery, status
"""


async def insert_delivery(conn: Connection, report: ReportRecord, *, redelivery: bool) -> Delivery:
    """A new PENDING delivery with a fresh idempotency key; the report becomes PENDING."""
    delivery_id = uuid.uuid4()
    cur = await conn.execute(
        f"""
        INSERT INTO report.deliveries
            (delivery_id, report_id, clinic_id, idempotency_key, redelivery, status)
        VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_DELIVERY_COLUMNS}
        """,  # noqa: S608 - constant columns
        (
            delivery_id,
            report.report_id,
            report.clinic_id,
            f"medmesh-report-{report.report_id}-{delivery_id}",
            redelivery,
            int(DeliveryStatus.PENDING),
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    await set_delivery_status(conn, report.report_id, DeliveryStatus.PENDING)
    return _delivery(row)


async def get_delivery(conn: Connection, clinic_id: str, idempotency_key: str) -> Delivery | None:
    """A delivery of the clinic by its idempotency key."""
    cur = await conn.execute(
        f"SELECT {_DELIVERY_COLUMNS} FROM report.deliveries "  # noqa: S608 - constant columns
        "WHERE clinic_id = %s AND idempotency_key = %s",
        (clinic_id, idempotency_key),
    )
    row = await cur.fetchone()
    return _delivery(row) if row else None


async def add_receipt(conn: Connection, delivery: Delivery, receipt: Receipt) -> None:
    """Record one HTTP attempt."""
    await conn.execute(
        """
        INSERT INTO report.delivery_receipts
            (delivery_id, report_id, clinic_id, attempt_time, http_status, mis_id, error,
             idempotency_key)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (
            delivery.delivery_id,
            delivery.report_id,
            delivery.clinic_id,
            receipt.attempt_time,
            receipt.http_status,
            receipt.mis_id,
            receipt.error[:1000],
            receipt.idempotency_key,
        ),
    )


async def finish_delivery(
    conn: Connection, delivery: Delivery, status: DeliveryStatus, *, mis_id: str, error: str
) -> None:
    """The delivery is DELIVERED or FAILED; the report shows it (if it is the latest)."""
    await conn.execute(
        "UPDATE report.deliveries SET status = %s, mis_id = %s, error = %s, finish_time = now() "
        "WHERE delivery_id = %s",
        (int(status), mis_id, error[:1000], delivery.delivery_id),
    )
    await conn.execute(
        """
        UPDATE report.reports SET delivery_status = %s, update_time = now()
        WHERE report_id = %s AND NOT EXISTS (
            SELECT 1 FROM report.deliveries d
            WHERE d.report_id = %s AND d.create_time > (
                SELECT create_time FROM report.deliveries WHERE delivery_id = %s))
        """,
        (int(status), delivery.report_id, delivery.report_id, delivery.delivery_id),
    )


async def reopen_failed_delivery(conn: Connection, clinic_id: str, idempotency_key: str) -> bool:
    """Put a FAILED delivery back to PENDING (a replayed dead letter), unless a later delivery
    of its report superseded it; the report shows PENDING again. True when it was reopened."""
    cur = await conn.execute(
        """
        UPDATE report.deliveries d SET status = %s, error = '', finish_time = NULL
        WHERE d.clinic_id = %s AND d.idempotency_key = %s AND d.status = %s
          AND NOT EXISTS (
            SELECT 1 FROM report.deliveries later
            WHERE later.report_id = d.report_id AND later.create_time > d.create_time)
        RETURNING d.report_id::text AS report_id
        """,
        (int(DeliveryStatus.PENDING), clinic_id, idempotency_key, int(DeliveryStatus.FAILED)),
    )
    row = await cur.fetchone()
    if row is None:
        return False
    await set_delivery_status(conn, row["report_id"], DeliveryStatus.PENDING)
    return True
