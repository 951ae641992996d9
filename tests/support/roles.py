"""Per-test database roles (medmesh/dbroles.py): a migration role and one login role per
service, with names unique to the test because roles are shared by the whole cluster."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from medmesh.dbroles import RoleLogin, ensure_database_roles, with_credentials
from medmesh.settings import SERVICES


@dataclass(frozen=True)
class DatabaseRoles:
    """URLs of one test database as its admin, the migration role and each service role."""

    admin_url: str
    migration_url: str
    migration_role: str
    service_urls: dict[str, str]
    service_roles: dict[str, str]

    @property
    def env(self) -> dict[str, str]:
        """What `medmesh migrate` (and a service that migrates at start) is given."""
        env = {"MEDMESH_POSTGRES_MIGRATION_URL": self.migration_url}
        for service, url in self.service_urls.items():
            env[f"MEDMESH_{service.upper()}_POSTGRES_URL"] = url
        return env


@contextmanager
def fresh_database(postgres_url: str) -> Iterator[str]:
    """URL of a new database on `postgres_url`'s server, dropped (with FORCE) afterwards."""
    name = f"t_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(postgres_url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def created_database_roles(database_url: str, prefix: str) -> Iterator[DatabaseRoles]:
    """Create the roles on `database_url`'s database; afterwards drop that database (so
    nothing is owned by them any more) and the roles."""
    migration = RoleLogin(f"{prefix}_migrator", secrets.token_urlsafe(12))
    services = {s: RoleLogin(f"{prefix}_{s}", secrets.token_urlsafe(12)) for s in SERVICES}
    ensure_database_roles(database_url, migration=migration, services=services)
    try:
        yield DatabaseRoles(
            admin_url=database_url,
            migration_url=with_credentials(database_url, migration.name, migration.password),
            migration_role=migration.name,
            service_urls={
                s: with_credentials(database_url, r.name, r.password) for s, r in services.items()
            },
            service_roles={s: r.name for s, r in services.items()},
        )
    finally:
        database = str(conninfo_to_dict(database_url)["dbname"])
        admin = urlsplit(database_url)._replace(path="/postgres").geturl()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
            for role in [migration, *services.values()]:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role.name)))
