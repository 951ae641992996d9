"""Schema migrations for every service: plain SQL files applied with yoyo-migrations.

Each service owns one PostgreSQL schema (`auth`, `ingest`, `infer`, `report`; `audit` is
shared) and its own migration history. yoyo's PostgreSQL backend takes a `schema` URL
parameter and runs `SET search_path TO <schema>` on its connection, so its bookkeeping tables
(`_yoyo_migration`, `_yoyo_log`, `yoyo_lock`, ...) and every unqualified name in the SQL files
land in that schema. The schema must exist first, which yoyo does not do; we create it.

Replicas of one service start together, so the whole run holds a PostgreSQL advisory lock per
schema (yoyo's own lock row is keyed by PID, which is 1 in every container).

Who runs them: the migration role (MEDMESH_POSTGRES_MIGRATION_URL), which owns every schema;
a service's own role may not create or alter anything (medmesh/dbroles.py). A run first reads
the schema's history and returns at once when nothing is pending, so a service starting with
its own role on an up-to-date schema needs no DDL rights; with pending migrations and no right
to apply them it fails with MigrationsPending, which says what to run.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations  # type: ignore[import-untyped]  # no stubs

from medmesh.errors import DependencyUnavailable

AUDIT_SCHEMA = "audit"
AUDIT_MIGRATIONS_DIR = Path(__file__).parent / "migrations_sql" / "audit"

# yoyo interpolates the schema into SET search_path unquoted, so only plain identifiers pass.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _check_schema(schema: str) -> None:
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema must be a lowercase identifier, got {schema!r}")


def _yoyo_url(database_url: str, schema: str) -> str:
    """`postgresql://...` → `postgresql+psycopg://...?schema=<schema>` (psycopg 3 backend)."""
    parts = urlsplit(database_url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ValueError("database URL must start with postgresql://")
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"] + [("schema", schema)]
    return urlunsplit(parts._replace(scheme="postgresql+psycopg", query=urlencode(query)))


def _advisory_key(schema: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock, one per schema."""
    digest = hashlib.sha256(f"medmesh.migrations.{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class MigrationsPending(RuntimeError):
    """The schema has migrations to apply and this role may not apply them."""


def _connect(database_url: str) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(database_url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DependencyUnavailable("postgres", str(exc)) from exc


def apply_migrations(database_url: str, *, schema: str, migrations_dir: Path) -> list[str]:
    """Apply the SQL files in `migrations_dir` that `schema` has not seen yet, in name order.

    Creates the schema if missing. Returns the ids of the migrations applied now (file names
    without `.sql`), so a second run returns []. Blocking: call it before serving, or through
    `asyncio.to_thread`. Raises DependencyUnavailable("postgres") when the server is down.
    """
    _check_schema(schema)
    if not migrations_dir.is_dir():
        raise FileNotFoundError(f"no migrations directory {migrations_dir}")
    migrations = read_migrations(str(migrations_dir))
    wanted = {migration.id for migration in migrations}
    if wanted <= set(_applied_ids(database_url, schema)):
        return []  # up to date: no lock, no DDL (a service's own role gets this far)
    try:
        with _connect(database_url) as lock_conn:
            lock_conn.execute("SELECT pg_advisory_lock(%s)", (_advisory_key(schema),))
            lock_conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            )
            backend = get_backend(_yoyo_url(database_url, schema))
            try:
                with backend.lock():
                    pending = backend.to_apply(migrations)
                    backend.apply_migrations(pending)
            finally:
                backend.connection.close()
            # Closing lock_conn releases the advisory lock.
    except psycopg.errors.InsufficientPrivilege as exc:
        missing = sorted(wanted - set(_applied_ids(database_url, schema)))
        raise MigrationsPending(
            f"schema {schema!r} has {len(missing)} migration(s) to apply ({', '.join(missing)}) "
            "and this database role may not apply them: run `medmesh migrate` with "
            "MEDMESH_POSTGRES_MIGRATION_URL (the migration role), or give this process that "
            f"variable ({exc.diag.message_primary})"
        ) from exc
    return [migration.id for migration in pending]


def _applied_ids(database_url: str, schema: str) -> list[str]:
    """`applied_migrations`, or [] when the history cannot be read (no schema yet, or no
    right to read it)."""
    try:
        return applied_migrations(database_url, schema=schema)
    except psycopg.errors.InsufficientPrivilege:
        return []


def applied_migrations(database_url: str, *, schema: str) -> list[str]:
    """Ids of the migrations recorded in `schema`'s own history, oldest first."""
    _check_schema(schema)
    query = sql.SQL(
        "SELECT migration_id FROM {}._yoyo_migration ORDER BY applied_at_utc, migration_id"
    ).format(sql.Identifier(schema))
    with _connect(database_url) as conn:
        try:
            return [str(row[0]) for row in conn.execute(query).fetchall()]
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return []


def apply_audit_migrations(database_url: str) -> list[str]:
    """Apply the shared `audit` schema's migrations (every service may call this at start)."""
    return apply_migrations(database_url, schema=AUDIT_SCHEMA, migrations_dir=AUDIT_MIGRATIONS_DIR)
