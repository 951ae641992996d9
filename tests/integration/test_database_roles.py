"""One database role per service, a migration role that owns the schemas, and the audit
table that no service can rewrite (medmesh/dbroles.py), against a real PostgreSQL database
per test with roles made as `medmesh up` makes them (tests/support/roles.py)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from support.roles import DatabaseRoles, created_database_roles, fresh_database

from medmesh.audit import Actor, record_audit_event
from medmesh.db import Database
from medmesh.migrate import migrate_all, service_migrations
from medmesh.migrations import MigrationsPending
from medmesh.runtime import apply_service_migrations
from medmesh.settings import SERVICES, Settings

# One table each service owns (and nobody else may touch).
OWN_TABLE = {
    "auth": "auth.users",
    "ingest": "ingest.studies",
    "infer": "infer.results",
    "report": "report.reports",
}
READ_MODELS = [
    "auth.report_recipients",
    "ingest.report_studies",
    "ingest.report_files",
    "infer.report_results",
]


@pytest.fixture(scope="module")
def migrated(postgres_url: str) -> Iterator[DatabaseRoles]:
    """A database of this module with the roles, every schema migrated by `medmesh migrate`
    as the migration role (read-only for the tests: what they try is refused)."""
    with (
        fresh_database(postgres_url) as database_url,
        created_database_roles(database_url, f"m{secrets.token_hex(3)}") as roles,
    ):
        migrate_all(roles.env)
        yield roles


def _run(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


def _refused(url: str, statement: str) -> str:
    """The message of the permission error `statement` gets as the role of `url`."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
        _run(url, statement)
    return str(refused.value)


def test_migrations_run_as_the_migration_role_which_owns_every_schema_and_table(
    migrated: DatabaseRoles,
) -> None:
    with psycopg.connect(migrated.admin_url) as conn:
        schema_owners = dict(
            conn.execute(
                "SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace"
                " WHERE nspname = ANY(%s)",
                ([*SERVICES, "audit"],),
            ).fetchall()
        )
        table_owners = {
            row[0]
            for row in conn.execute(
                "SELECT tableowner FROM pg_tables WHERE schemaname = ANY(%s)",
                ([*SERVICES, "audit"],),
            ).fetchall()
        }
        history = conn.execute("SELECT count(*) FROM auth._yoyo_migration").fetchone()

    assert schema_owners == {s: migrated.migration_role for s in [*SERVICES, "audit"]}
    assert table_owners == {migrated.migration_role}
    assert history is not None
    assert history[0] >= 1


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("owner", SERVICES)
def test_a_service_role_reads_and_writes_its_own_schema_and_no_other(
    migrated: DatabaseRoles, service: str, owner: str
) -> None:
    url = migrated.service_urls[service]
    table = OWN_TABLE[owner]
    # svc_report has USAGE on the schemas whose read models it reads, not their tables.
    reads_views_there = service == "report" and owner != "report"
    denied = f"permission denied for {'table' if reads_views_there else 'schema'} "
    denied += table.split(".")[1] if reads_views_there else owner
    for statement in [f"SELECT count(*) FROM {table}", f"DELETE FROM {table} WHERE false"]:
        if service == owner:
            _run(url, statement)
        else:
            assert denied in _refused(url, statement)


@pytest.mark.parametrize("service", SERVICES)
def test_every_table_of_a_service_schema_is_readable_and_writable_by_its_role(
    migrated: DatabaseRoles, service: str
) -> None:
    with psycopg.connect(migrated.admin_url) as conn:
        rows = conn.execute(
            # has_table_privilege with a list is true when ANY is held: one call per right.
            "SELECT t.tablename, bool_and(has_table_privilege(%s, format('%%I.%%I',"
            " t.schemaname, t.tablename), p.privilege)) FROM pg_tables t,"
            " unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p(privilege)"
            " WHERE t.schemaname = %s AND t.tablename NOT LIKE %s AND t.tablename <> 'yoyo_lock'"
            " GROUP BY t.tablename",
            (migrated.service_roles[service], service, r"\_yoyo%"),
        ).fetchall()

    assert len(rows) >= 2
    assert [table for table, allowed in rows if not allowed] == []


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE {schema}.intruder (id int)",
        "ALTER TABLE {table} ADD COLUMN intruder int",
        "DROP TABLE {table}",
        "TRUNCATE {table}",
        "INSERT INTO {schema}._yoyo_migration (migration_hash, migration_id, applied_at_utc)"
        " VALUES ('x', 'x', now())",
    ],
)
def test_a_service_role_cannot_change_its_schema_or_its_migration_history(
    migrated: DatabaseRoles, service: str, statement: str
) -> None:
    sql_text = statement.format(schema=service, table=OWN_TABLE[service])

    assert _refused(migrated.service_urls[service], sql_text)


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit.events SET action = 'nothing happened'",
        "DELETE FROM audit.events",
        "TRUNCATE audit.events",
        "ALTER TABLE audit.events DISABLE TRIGGER events_append_only",
        "DROP TABLE audit.events",
    ],
)
async def test_a_service_role_appends_to_the_audit_trail_but_cannot_rewrite_it(
    migrated: DatabaseRoles, service: str, statement: str
) -> None:
    url = migrated.service_urls[service]
    actor = Actor(user_id="u-1", roles=("clinician",))
    clinic = f"clinic-{service}-{secrets.token_hex(3)}"
    async with Database(url) as db, db.transaction() as conn:
        await record_audit_event(
            conn, clinic_id=clinic, actor=actor, action="study.read", resource="studies/s-1"
        )

    message = _refused(url, statement)

    assert "permission denied for table events" in message or "must be owner" in message
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT action, actor_user_id FROM audit.events WHERE clinic_id = %s", (clinic,)
        ).fetchall()
    assert rows == [("study.read", "u-1")]


def test_even_the_owner_of_the_audit_table_cannot_update_or_delete_a_row(
    migrated: DatabaseRoles,
) -> None:
    _run(
        migrated.service_urls["ingest"],
        "INSERT INTO audit.events (clinic_id, actor_user_id, action, resource)"
        " VALUES ('c', 'u', 'study.create', 'studies/s')",
    )
    for statement in [
        "UPDATE audit.events SET action = 'x'",
        "DELETE FROM audit.events",
        "TRUNCATE audit.events",
    ]:
        assert "append-only" in _refused(migrated.migration_url, statement)


@pytest.mark.parametrize("view", READ_MODELS)
@pytest.mark.parametrize("service", SERVICES)
def test_only_svc_report_reads_the_read_models_published_for_it(
    migrated: DatabaseRoles, view: str, service: str
) -> None:
    url = migrated.service_urls[service]
    statement = f"SELECT * FROM {view} LIMIT 1"
    if service == "report" or view.startswith(f"{service}."):
        _run(url, statement)
    else:
        assert _refused(url, statement)


def test_read_model_grants_do_not_depend_on_which_service_migrates_first(
    database_roles: DatabaseRoles,
) -> None:
    # svc_report's replicas may start before svc_auth ever ran: its own grants find no
    # view yet; svc_auth's run grants it then.
    env = database_roles.env
    for service in ["report", "ingest", "infer", "auth"]:
        settings = Settings.from_env(env, service=service)
        asyncio.run(apply_service_migrations(settings, service_migrations(service)))

    for view in READ_MODELS:
        _run(database_roles.service_urls["report"], f"SELECT * FROM {view} LIMIT 1")


async def test_a_service_on_an_up_to_date_schema_starts_with_its_own_role_alone(
    migrated: DatabaseRoles,
) -> None:
    settings = Settings.from_env(
        {"MEDMESH_INFER_POSTGRES_URL": migrated.service_urls["infer"]}, service="infer"
    )

    await apply_service_migrations(settings, service_migrations("infer"))


async def test_a_service_role_facing_pending_migrations_says_to_run_medmesh_migrate(
    database_roles: DatabaseRoles,
) -> None:
    settings = Settings.from_env(
        {"MEDMESH_INGEST_POSTGRES_URL": database_roles.service_urls["ingest"]}, service="ingest"
    )

    with pytest.raises(MigrationsPending, match="medmesh migrate"):
        await apply_service_migrations(settings, service_migrations("ingest"))


def test_schemas_made_before_the_roles_existed_are_handed_to_the_migration_role(
    database_url: str, name_prefix: str
) -> None:
    # A data directory from before the roles: everything migrated by the one admin role.
    migrate_all({"MEDMESH_POSTGRES_URL": database_url})

    with created_database_roles(database_url, name_prefix) as roles:
        migrate_all(roles.env)
        with psycopg.connect(roles.admin_url) as conn:
            owners = conn.execute(
                "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s)"
                " UNION SELECT DISTINCT pg_get_userbyid(p.proowner) FROM pg_proc p"
                " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = ANY(%s)",
                ([*SERVICES, "audit"], [*SERVICES, "audit"]),
            ).fetchall()
        # The owner can change its schemas again (the next migration), services their rows.
        _run(roles.migration_url, "ALTER TABLE report.reports ADD COLUMN later_migration int")
        _run(roles.service_urls["report"], "SELECT later_migration FROM report.reports")
        assert _refused(roles.service_urls["ingest"], "SELECT * FROM auth.users")

    assert owners == [(roles.migration_role,)]
