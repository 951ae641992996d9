"""Database roles: one login role per service with its own schema's privileges only, and a
migration role that owns every schema.

    migration role (MEDMESH_POSTGRES_MIGRATION_URL)  owns audit, auth, ingest, infer, report;
                                                     runs the migrations and the grants below
    medmesh_<svc> (MEDMESH_<SVC>_POSTGRES_URL)       USAGE on its schema; SELECT, INSERT,
                                                     UPDATE, DELETE on its tables (SELECT on
                                                     its views); its sequences; no DDL
                                                     audit.events: SELECT and INSERT only

A service never reads another service's tables. The one exception is a published contract:
svc_report reads read-model views that svc_auth, svc_ingest and svc_infer keep for it
(`SERVICE_READS`), and gets SELECT on exactly those views. A view runs with its owner's
rights, so that grants no right on the tables behind it.

`grant_service_privileges` runs as the migration role after a service's migrations (every
run: new tables get their grants); it grants both directions of `SERVICE_READS`, so whichever
of a reader and an owner migrates last completes the pair. `ensure_database_roles` creates
the roles; it needs a role that may create roles (the superuser of `medmesh up`'s embedded
PostgreSQL, the test fixtures; in production a DBA, see README "Database roles").
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from medmesh.settings import SERVICES

AUDIT_SCHEMA = "audit"
YOYO_HISTORY = "_yoyo_migration"
_YOYO_TABLES = frozenset({YOYO_HISTORY, "_yoyo_log", "_yoyo_version", "yoyo_lock"})

# reader service → {owning schema: views it may SELECT}. Nothing else crosses schemas.
SERVICE_READS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "report": {
        "auth": ("report_recipients",),
        "ingest": ("report_studies", "report_files"),
        "infer": ("report_results",),
    },
}

_GRANT_LOCK = int.from_bytes(
    hashlib.sha256(b"medmesh.migrations.grants").digest()[:8], "big", signed=True
)


def default_role(service: str) -> str:
    """`medmesh_<service>`: the role a service connects as unless configured otherwise."""
    return f"medmesh_{service}"


def role_of(database_url: str) -> str:
    """The user a libpq URL (or key=value string) connects as; "" when it names none."""
    return str(conninfo_to_dict(database_url).get("user") or "")


def with_credentials(database_url: str, user: str, password: str) -> str:
    """`postgresql://` URL `database_url` connecting as `user` with `password` (host, port,
    database and query kept)."""
    parts = urlsplit(database_url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ValueError("database URL must start with postgresql://")
    host = parts.netloc.rpartition("@")[2]
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{credentials}@{host}"))


def _role_exists(conn: psycopg.Connection[tuple[object, ...]], role: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    return row is not None


def _relations(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> list[tuple[str, str]]:
    """(name, relkind) of the tables, views and materialized views in `schema`."""
    rows = conn.execute(
        "SELECT c.relname, c.relkind::text FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm') ORDER BY c.relname",
        (schema,),
    ).fetchall()
    return [(str(name), str(kind)) for name, kind in rows]


def _grant_own_schema(
    conn: psycopg.Connection[tuple[object, ...]], schema: str, role: sql.Identifier
) -> None:
    target = sql.Identifier(schema)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(target, role))
    for name, kind in _relations(conn, schema):
        relation = sql.Identifier(schema, name)
        if name in _YOYO_TABLES:
            # Reading the history lets a service see at start-up that nothing is pending.
            if name == YOYO_HISTORY:
                conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(relation, role))
            continue
        rights = "SELECT" if kind in {"v", "m"} else "SELECT, INSERT, UPDATE, DELETE"
        conn.execute(sql.SQL(f"GRANT {rights} ON {{}} TO {{}}").format(relation, role))
    conn.execute(
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(target, role)
    )


def _grant_audit(conn: psycopg.Connection[tuple[object, ...]], role: sql.Identifier) -> None:
    audit = sql.Identifier(AUDIT_SCHEMA)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(audit, role))
    names = {name for name, _ in _relations(conn, AUDIT_SCHEMA)}
    if YOYO_HISTORY in names:
        history = sql.Identifier(AUDIT_SCHEMA, YOYO_HISTORY)
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(history, role))
    if "events" in names:
        events = sql.Identifier(AUDIT_SCHEMA, "events")
        # Append-only for services: no UPDATE, DELETE or TRUNCATE (the triggers refuse them
        # for the owner too).
        conn.execute(
            sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON {} FROM {}").format(
                events, role
            )
        )
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(events, role))


def _grant_reads(
    conn: psycopg.Connection[tuple[object, ...]], schema: str, views: tuple[str, ...], role: str
) -> None:
    """SELECT on those of `views` in `schema` that exist now (the owner may migrate later;
    its own run grants them then)."""
    existing = {name for name, _ in _relations(conn, schema)}
    present = [view for view in views if view in existing]
    if not present:
        return
    grantee = sql.Identifier(role)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), grantee))
    for view in present:
        relation = sql.Identifier(schema, view)
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(relation, grantee))


def grant_service_privileges(
    migration_url: str, *, service: str, role: str, roles: Mapping[str, str]
) -> None:
    """As the migration role (owner of the schemas): give `role` (service `service`) what
    it needs and nothing more, and the readers of `service`'s views (roles by service in
    `roles`; those that do not exist yet are skipped) SELECT on them. Idempotent."""
    with psycopg.connect(migration_url, autocommit=True, connect_timeout=10) as conn:
        # Concurrent GRANTs on one object fail ("tuple concurrently updated"): one at a time.
        conn.execute("SELECT pg_advisory_lock(%s)", (_GRANT_LOCK,))
        grantee = sql.Identifier(role)
        with conn.transaction():
            _grant_own_schema(conn, service, grantee)
            _grant_audit(conn, grantee)
            for schema, views in SERVICE_READS.get(service, {}).items():
                _grant_reads(conn, schema, views, role)
            for reader, owners in SERVICE_READS.items():
                reader_role = roles.get(reader, default_role(reader))
                if service in owners and _role_exists(conn, reader_role):
                    _grant_reads(conn, service, owners[service], reader_role)


@dataclass(frozen=True)
class RoleLogin:
    """A login role and its password."""

    name: str
    password: str


def ensure_database_roles(
    admin_url: str, *, migration: RoleLogin, services: Mapping[str, RoleLogin]
) -> None:
    """As a role that may create roles: the migration role (CONNECT and CREATE on the
    database: it creates the schemas) and one login role per service (CONNECT only), with
    these passwords. Schemas that exist already (a data directory from before the roles) are
    handed to the migration role with everything in them. Idempotent."""
    database = str(conninfo_to_dict(admin_url).get("dbname") or "")
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        for login in [migration, *services.values()]:
            verb = "ALTER" if _role_exists(conn, login.name) else "CREATE"
            conn.execute(
                sql.SQL(f"{verb} ROLE {{}} LOGIN PASSWORD {{}}").format(
                    sql.Identifier(login.name), sql.Literal(login.password)
                )
            )
        db = sql.Identifier(database or "postgres")
        conn.execute(
            sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(
                db, sql.Identifier(migration.name)
            )
        )
        for login in services.values():
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, sql.Identifier(login.name))
            )
        # PostgreSQL < 15 lets everyone create tables in `public`; nothing of ours lives there.
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        for schema in (AUDIT_SCHEMA, *SERVICES):
            _adopt_schema(conn, schema, migration.name)


def _adopt_schema(conn: psycopg.Connection[tuple[object, ...]], schema: str, owner: str) -> None:
    """Make `owner` own `schema` and its tables, views, sequences and functions, when the
    schema exists and belongs to someone else (created before the roles existed)."""
    row = conn.execute(
        "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %s", (schema,)
    ).fetchone()
    if row is None or row[0] == owner:
        return
    new_owner = sql.Identifier(owner)
    conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema), new_owner))
    kinds = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW"}
    for name, kind in _relations(conn, schema):
        statement = sql.SQL(f"ALTER {kinds[kind]} {{}} OWNER TO {{}}")
        conn.execute(statement.format(sql.Identifier(schema, name), new_owner))
    # Sequences a table owns follow their table; free-standing ones are moved here.
    sequences = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind = 'S' AND NOT EXISTS ("
        "  SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))",
        (schema,),
    ).fetchall()
    for (sequence,) in sequences:
        statement = sql.SQL("ALTER SEQUENCE {} OWNER TO {}")
        conn.execute(statement.format(sql.Identifier(schema, str(sequence)), new_owner))
    functions = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s",
        (schema,),
    ).fetchall()
    for (signature,) in functions:
        conn.execute(
            sql.SQL("ALTER ROUTINE {} OWNER TO {}").format(sql.SQL(str(signature)), new_owner)
        )
