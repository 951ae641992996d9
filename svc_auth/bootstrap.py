"""Creating clinics and their first accounts, which no RPC can do.

Register only joins an existing clinic, as a viewer. Operators create a clinic with its
first admin (or a machine client with role `service`) here, either at every start from
MEDMESH_AUTH_BOOTSTRAP_CLINIC / _ADMIN_EMAIL / _ADMIN_PASSWORD, or by hand:

    MEDMESH_POSTGRES_URL=... python -m svc_auth.bootstrap --clinic clinic-b \\
        --email admin@clinic-b.example --role admin      # password read from the terminal

Idempotent: an existing address is left untouched (its password is never overwritten), so the
start-up bootstrap cannot undo a password change.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import uuid

import structlog

from medmesh.audit import Actor, record_audit_event
from medmesh.db import Database
from medmesh.identity import ALL_ROLES
from medmesh.migrate import service_migrations
from medmesh.runtime import apply_service_migrations
from medmesh.settings import Settings
from svc_auth import store
from svc_auth.config import BootstrapAccount
from svc_auth.passwords import (
    PasswordHashing,
    clinic_id_violation,
    email_violation,
    normalize_email,
    password_violation,
)

_log = structlog.get_logger("svc_auth.bootstrap")
BOOTSTRAP_ACTOR = Actor("bootstrap")


async def ensure_account(
    database: Database, hashing: PasswordHashing, account: BootstrapAccount
) -> bool:
    """Create the clinic if needed and the verified account if its e-mail is new.

    Returns True when the account was created now. Raises ValueError for a bad clinic id,
    e-mail, role or weak password (configuration errors, reported at start-up).
    """
    email = normalize_email(account.email)
    problems = [
        clinic_id_violation("clinic", account.clinic_id),
        email_violation("email", email),
        password_violation("password", account.password, email=email),
    ]
    found = [f"{p.field} {p.description}" for p in problems if p is not None]
    if not account.roles or not set(account.roles) <= ALL_ROLES:
        found.append(f"roles must be among {sorted(ALL_ROLES)}")
    if found:
        raise ValueError("bootstrap account: " + "; ".join(found))
    async with database.read_connection() as conn:
        if await store.user_by_email(conn, email) is not None:
            return False
    password_hash = await hashing.hash(account.password)
    async with database.transaction() as conn:
        created_clinic = await store.ensure_clinic(conn, account.clinic_id)
        if await store.user_by_email(conn, email) is not None:
            return False  # another replica won the race
        user = await store.insert_user(
            conn,
            user_id=uuid.uuid4(),
            clinic_id=account.clinic_id,
            email=email,
            display_name=email.partition("@")[0],
            password_hash=password_hash,
            roles=sorted(set(account.roles)),
            approval_state="approved",  # the operator made it: no admin to wait for
            email_verified=True,
        )
        await record_audit_event(
            conn,
            clinic_id=account.clinic_id,
            actor=BOOTSTRAP_ACTOR,
            action="auth.bootstrap",
            resource=f"users/{user['user_id']}",
            detail={"roles": list(user["roles"]), "created_clinic": created_clinic},
        )
    _log.info(
        "bootstrap account created",
        clinic_id=account.clinic_id,
        user_id=str(user["user_id"]),
        roles=list(user["roles"]),
    )
    return True


async def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m svc_auth.bootstrap", description=__doc__)
    parser.add_argument("--clinic", required=True, help="clinic id, e.g. clinic-b")
    parser.add_argument("--email", required=True)
    parser.add_argument("--role", action="append", choices=sorted(ALL_ROLES), default=[])
    args = parser.parse_args(argv)
    password = os.environ.get("MEDMESH_AUTH_BOOTSTRAP_PASSWORD") or getpass.getpass("password: ")
    settings = Settings.from_env(os.environ, service="auth")
    await apply_service_migrations(settings, service_migrations("auth"))
    account = BootstrapAccount(args.clinic, args.email, password, tuple(args.role or ["admin"]))
    async with Database(settings.postgres_url, application_name="medmesh-auth-bootstrap") as db:
        created = await ensure_account(db, PasswordHashing(), account)
    sys.stderr.write("created\n" if created else "exists already, left unchanged\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(_main(sys.argv[1:])))
