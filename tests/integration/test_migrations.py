"""The migrations runner (yoyo, one schema and one history per service) and the shared,
append-only `audit.events` table, against a real PostgreSQL database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from medmesh.audit import Actor, record_audit_event
from medmesh.db import Database
from medmesh.errors import DependencyUnavailable
from medmesh.migrations import (
    AUDIT_MIGRATIONS_DIR,
    applied_migrations,
    apply_audit_migrations,
    apply_migrations,
)

YOYO_TABLES = {"_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock"}


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    """A service-style folder of two plain-SQL migrations with unqualified table names."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001.create-studies.sql").write_text(
        "CREATE TABLE studies (id text PRIMARY KEY, clinic_id text NOT NULL);\n"
    )
    (folder / "0002.add-status.sql").write_text(
        "ALTER TABLE studies ADD COLUMN status text NOT NULL DEFAULT 'uploaded';\n"
    )
    return folder


def tables_in(database_url: str, schema: str) -> set[str]:
    """Names of the tables in `schema`."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
    return {str(row[0]) for row in rows}


def test_migrations_apply_once_and_a_rerun_applies_nothing(
    database_url: str, migrations_dir: Path
) -> None:
    first = apply_migrations(database_url, schema="ingest", migrations_dir=migrations_dir)
    second = apply_migrations(database_url, schema="ingest", migrations_dir=migrations_dir)

    assert first == ["0001.create-studies", "0002.add-status"]
    assert second == []
    assert applied_migrations(database_url, schema="ingest") == first
    assert tables_in(database_url, "ingest") == {"studies"} | YOYO_TABLES
    assert tables_in(database_url, "public") == set()


def test_each_schema_keeps_its_own_history(database_url: str, migrations_dir: Path) -> None:
    apply_migrations(database_url, schema="infer", migrations_dir=migrations_dir)
    (migrations_dir / "0003.add-notes.sql").write_text("ALTER TABLE studies ADD COLUMN notes text;")

    report_applied = apply_migrations(database_url, schema="report", migrations_dir=migrations_dir)
    infer_applied = apply_migrations(database_url, schema="infer", migrations_dir=migrations_dir)

    assert report_applied == ["0001.create-studies", "0002.add-status", "0003.add-notes"]
    assert infer_applied == ["0003.add-notes"]
    assert applied_migrations(database_url, schema="report") == report_applied
    assert applied_migrations(database_url, schema="auth") == []


def test_replicas_migrating_at_once_apply_each_migration_exactly_once(
    database_url: str, migrations_dir: Path
) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(
                lambda _: apply_migrations(
                    database_url, schema="auth", migrations_dir=migrations_dir
                ),
                range(4),
            )
        )

    assert sorted(results, key=len) == [[], [], [], ["0001.create-studies", "0002.add-status"]]


def test_a_failing_migration_is_rolled_back_and_not_recorded(
    database_url: str, migrations_dir: Path
) -> None:
    (migrations_dir / "0003.broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT no_such_column FROM studies;\n"
    )
    with pytest.raises(psycopg.errors.UndefinedColumn):
        apply_migrations(database_url, schema="ingest", migrations_dir=migrations_dir)

    assert applied_migrations(database_url, schema="ingest") == [
        "0001.create-studies",
        "0002.add-status",
    ]
    assert "half_done" not in tables_in(database_url, "ingest")


def test_migrating_an_unreachable_database_raises_dependency_unavailable(
    migrations_dir: Path, unused_tcp_port: int
) -> None:
    url = f"postgresql://medmesh@127.0.0.1:{unused_tcp_port}/medmesh"
    with pytest.raises(DependencyUnavailable) as raised:
        apply_migrations(url, schema="ingest", migrations_dir=migrations_dir)

    assert raised.value.dependency == "postgres"


@pytest.mark.parametrize("bad_schema", ["Ingest", "ingest; DROP TABLE x", "", "1st"])
def test_schema_names_that_are_not_plain_identifiers_are_refused(
    database_url: str, migrations_dir: Path, bad_schema: str
) -> None:
    with pytest.raises(ValueError, match="lowercase identifier"):
        apply_migrations(database_url, schema=bad_schema, migrations_dir=migrations_dir)


# audit.events


@pytest.fixture
async def audit_db(database_url: str) -> AsyncIterator[Database]:
    """A database with the audit schema migrated, closed after the test."""
    assert apply_audit_migrations(database_url) == ["0001.audit-events"]
    db = Database(database_url)
    await db.open()
    yield db
    await db.close()


async def test_audit_events_are_recorded_with_actor_study_and_detail(audit_db: Database) -> None:
    async with audit_db.transaction() as conn:
        event_id = await record_audit_event(
            conn,
            clinic_id="clinic-1",
            actor=Actor("user-7", ("clinician",)),
            action="result.store",
            resource="studies/s-1/results/r-1",
            study_id="s-1",
            detail={"model": "resnet50", "version": 3},
        )
    async with audit_db.read_connection() as conn:
        row = await (await conn.execute("SELECT * FROM audit.events")).fetchone()

    assert row is not None
    assert row["id"] == event_id
    assert row["clinic_id"] == "clinic-1"
    assert row["actor_user_id"] == "user-7"
    assert row["actor_roles"] == ["clinician"]
    assert row["action"] == "result.store"
    assert row["resource"] == "studies/s-1/results/r-1"
    assert row["study_id"] == "s-1"
    assert row["detail"] == {"model": "resnet50", "version": 3}
    assert row["occurred_at"] is not None


async def audit_then_fail(db: Database) -> None:
    """Record an audit event in a transaction whose change then fails."""
    async with db.transaction() as conn:
        await record_audit_event(
            conn, clinic_id="c", actor=Actor("u"), action="study.delete", resource="studies/x"
        )
        raise RuntimeError("the deletion itself failed")


async def test_audit_event_rolls_back_with_the_change_it_records(audit_db: Database) -> None:
    with pytest.raises(RuntimeError):
        await audit_then_fail(audit_db)
    async with audit_db.read_connection() as conn:
        count = await (await conn.execute("SELECT count(*) AS n FROM audit.events")).fetchone()

    assert count == {"n": 0}


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit.events SET action = 'study.view'",
        "DELETE FROM audit.events",
        "TRUNCATE audit.events",
    ],
)
async def test_audit_events_cannot_be_updated_or_deleted(
    audit_db: Database, statement: str
) -> None:
    async with audit_db.transaction() as conn:
        await record_audit_event(
            conn,
            clinic_id="c",
            actor=Actor("u", ("admin",)),
            action="study.upload",
            resource="studies/s-2",
            study_id="s-2",
        )
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        async with audit_db.transaction() as conn:
            await conn.execute(statement)
    async with audit_db.read_connection() as conn:
        rows = await (await conn.execute("SELECT action FROM audit.events")).fetchall()

    assert rows == [{"action": "study.upload"}]


def test_audit_migrations_ship_inside_the_package() -> None:
    assert (AUDIT_MIGRATIONS_DIR / "0001.audit-events.sql").is_file()
