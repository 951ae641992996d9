#!/usr/bin/env python3
"""Create medmesh's PostgreSQL roles from the URLs the stack already uses (compose's
`db-roles` job; by hand: the same environment, a shell with the medmesh package installed).

    MEDMESH_POSTGRES_URL=postgresql://ADMIN:...@host/medmesh \\
    MEDMESH_POSTGRES_MIGRATION_URL=postgresql://medmesh_migrator:...@host/medmesh \\
    MEDMESH_AUTH_POSTGRES_URL=postgresql://medmesh_auth:...@host/medmesh  # + INGEST, INFER, REPORT
    python scripts/make_db_roles.py

MEDMESH_POSTGRES_URL is a role that may create roles (the image's superuser in compose); the
others name each role and its password. medmesh.dbroles.ensure_database_roles does the work:
the migration role owns the schemas, each service role may only connect (its privileges are
granted by `medmesh migrate`). Idempotent: a second run sets the same passwords again.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from psycopg.conninfo import conninfo_to_dict

from medmesh.dbroles import RoleLogin, ensure_database_roles
from medmesh.settings import SERVICES


def login_of(environ: Mapping[str, str], variable: str) -> RoleLogin:
    """The role and password in the URL of `variable`."""
    url = environ.get(variable, "")
    params = conninfo_to_dict(url) if url else {}
    if not params.get("user") or not params.get("password"):
        raise SystemExit(f"{variable} must be a postgresql:// URL with a user and a password")
    return RoleLogin(str(params["user"]), str(params["password"]))


def main(environ: Mapping[str, str]) -> int:
    """Create or update the migration role and the four service roles."""
    admin_url = environ.get("MEDMESH_POSTGRES_URL", "")
    if not admin_url:
        raise SystemExit("MEDMESH_POSTGRES_URL (a role that may create roles) is not set")
    migration = login_of(environ, "MEDMESH_POSTGRES_MIGRATION_URL")
    services = {s: login_of(environ, f"MEDMESH_{s.upper()}_POSTGRES_URL") for s in SERVICES}
    ensure_database_roles(admin_url, migration=migration, services=services)
    names = ", ".join([migration.name, *(login.name for login in services.values())])
    sys.stdout.write(f"roles ready: {names}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(os.environ))
