"""The approval migration keeps existing accounts' access: users that existed before it are
approved, and report recipients among them stay recipients."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import psycopg

from medmesh.migrate import service_migrations
from medmesh.migrations import apply_migrations

APPROVAL = "0091.approval-and-invitations"


def test_users_that_existed_before_the_approval_migration_are_approved(
    database_url: str, tmp_path: Path
) -> None:
    auth = next(m for m in service_migrations("auth") if m.schema == "auth")
    before = tmp_path / "before"
    before.mkdir()
    for sql in sorted(auth.directory.glob("*.sql")):
        if sql.stem < APPROVAL:
            shutil.copy(sql, before)
    apply_migrations(database_url, schema="auth", migrations_dir=before)
    user_id = uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO auth.clinics (clinic_id) VALUES ('clinic-old')")
        conn.execute(
            "INSERT INTO auth.users (user_id, clinic_id, email, display_name, password_hash, "
            "email_verified) VALUES (%s, 'clinic-old', 'old@clinic-old.example', 'Old', 'x', true)",
            (user_id,),
        )
        conn.execute(
            "INSERT INTO auth.user_roles (user_id, role) VALUES (%s, 'clinician')", (user_id,)
        )

    applied = apply_migrations(database_url, schema="auth", migrations_dir=auth.directory)

    assert applied == [APPROVAL]
    with psycopg.connect(database_url) as conn:
        state = conn.execute(
            "SELECT approval_state, approved_at IS NOT NULL FROM auth.users WHERE user_id = %s",
            (user_id,),
        ).fetchone()
        recipients = conn.execute("SELECT email FROM auth.report_recipients").fetchall()
    assert state == ("approved", True)
    assert recipients == [("old@clinic-old.example",)]
