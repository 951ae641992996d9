"""Which migrations exist: one schema per service (`svc_<name>/migrations/*.sql`, schema
`<name>`) plus the shared append-only `audit` schema. Used by `medmesh migrate`, `medmesh up`
and by each service at start-up (idempotent: yoyo records what ran, and locks)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from medmesh.runtime import Migrations, apply_service_migrations
from medmesh.settings import SERVICES, Settings

AUDIT = Migrations("audit", Path(__file__).resolve().parent / "migrations_sql" / "audit")


def service_migrations(service: str) -> list[Migrations]:
    """The shared audit schema first (services write to it), then the service's own schema."""
    directory = Path(str(resources.files(f"svc_{service}"))) / "migrations"
    return [AUDIT, Migrations(service, directory)]


def migrate_all(environ: Mapping[str, str]) -> None:
    """Bring every schema of every service up to date, in SERVICES order (owners of the
    read-model views before svc_report), as MEDMESH_POSTGRES_MIGRATION_URL when set, and
    grant each service's role (MEDMESH_<SVC>_POSTGRES_URL's user) its privileges."""
    for service in SERVICES:
        settings = Settings.from_env(environ, service=service)
        asyncio.run(apply_service_migrations(settings, service_migrations(service)))
