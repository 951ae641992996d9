"""Every SQL statement of svc_auth. Functions take the connection of the caller's transaction,
so a change, its audit event and its queued mail commit together. Queries about users take
the clinic id wherever a caller acts on someone else, so another clinic's users are unseen."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg.rows import scalar_row
from psycopg.types.json import Jsonb

from medmesh.db import Connection

Row = dict[str, Any]

_USER = """
    SELECT u.user_id, u.clinic_id, u.email, u.display_name, u.password_hash,
           u.email_verified, u.disabled, u.created_at, u.updated_at, u.approval_state,
           coalesce(array_agg(r.role ORDER BY r.role) FILTER (WHERE r.role IS NOT NULL),
                    '{}') AS roles
    FROM auth.users u LEFT JOIN auth.user_roles r USING (user_id)
"""


def digest(secret: str) -> bytes:
    """SHA-256 of a high-entropy secret (e-mail and refresh tokens are stored only hashed)."""
    return hashlib.sha256(secret.encode()).digest()


async def database_now(conn: Connection) -> datetime:
    """The database clock, which decides every expiry."""
    async with conn.cursor(row_factory=scalar_row) as cur:
        await cur.execute("SELECT now()")
        return await cur.fetchone()  # type: ignore[return-value]


# --- clinics ---------------------------------------------------------------------------


async def clinic_exists(conn: Connection, clinic_id: str) -> bool:
    """True when the clinic is known."""
    cur = await conn.execute("SELECT 1 FROM auth.clinics WHERE clinic_id = %s", (clinic_id,))
    return await cur.fetchone() is not None


async def ensure_clinic(conn: Connection, clinic_id: str, display_name: str = "") -> bool:
    """Create the clinic unless it exists; True when it was created now."""
    cur = await conn.execute(
        "INSERT INTO auth.clinics (clinic_id, display_name) VALUES (%s, %s) "
        "ON CONFLICT (clinic_id) DO NOTHING RETURNING clinic_id",
        (clinic_id, display_name),
    )
    return await cur.fetchone() is not None


# --- users -----------------------------------------------------------------------------


async def insert_user(
    conn: Connection,
    *,
    user_id: UUID,
    clinic_id: str,
    email: str,
    display_name: str,
    password_hash: str,
    roles: list[str],
    approval_state: str,
    email_verified: bool = False,
) -> Row:
    """Insert a user with roles; raises psycopg's UniqueViolation for a taken e-mail.

    `approval_state` (`pending` or `approved`) has no default on purpose: every caller says
    whether the account may reach clinic data.
    """
    await conn.execute(
        "INSERT INTO auth.users (user_id, clinic_id, email, display_name, password_hash, "
        "email_verified, approval_state, approved_at) VALUES (%s, %s, %s, %s, %s, %s, %s, "
        "CASE WHEN %s = 'approved' THEN now() END)",
        (
            user_id,
            clinic_id,
            email,
            display_name,
            password_hash,
            email_verified,
            approval_state,
            approval_state,
        ),
    )
    await replace_roles(conn, user_id, roles)
    row = await user_by_id(conn, user_id)
    assert row is not None
    return row


async def user_by_email(conn: Connection, email: str) -> Row | None:
    """The user with this (normalized) e-mail, whatever the clinic (login, reset)."""
    cur = await conn.execute(_USER + " WHERE u.email = %s GROUP BY u.user_id", (email,))
    return await cur.fetchone()


async def user_by_id(
    conn: Connection, user_id: UUID | str, *, clinic_id: str | None = None, lock: bool = False
) -> Row | None:
    """The user, if it exists (and belongs to `clinic_id` when given)."""
    if lock:
        locked = await conn.execute(
            "SELECT 1 FROM auth.users WHERE user_id = %s FOR UPDATE", (user_id,)
        )
        await locked.fetchone()
    query = _USER + " WHERE u.user_id = %s AND (%s::text IS NULL OR u.clinic_id = %s)"
    cur = await conn.execute(query + " GROUP BY u.user_id", (user_id, clinic_id, clinic_id))
    return await cur.fetchone()


async def list_users(
    conn: Connection,
    clinic_id: str,
    *,
    after: tuple[datetime, UUID] | None,
    limit: int,
    approval_state: str | None = None,
) -> list[Row]:
    """One page of a clinic's users, oldest first (keyset pagination), optionally only
    those in one approval state."""
    after_time, after_id = after or (None, None)
    cur = await conn.execute(
        _USER + " WHERE u.clinic_id = %s AND (%s::text IS NULL OR u.approval_state = %s)"
        " AND (%s::timestamptz IS NULL"
        " OR (u.created_at, u.user_id) > (%s::timestamptz, %s::uuid))"
        " GROUP BY u.user_id ORDER BY u.created_at, u.user_id LIMIT %s",
        (clinic_id, approval_state, approval_state, after_time, after_time, after_id, limit),
    )
    return await cur.fetchall()


async def approve_user(conn: Connection, user_id: UUID | str) -> bool:
    """Mark a pending user approved; False when it was approved already."""
    cur = await conn.execute(
        "UPDATE auth.users SET approval_state = 'approved', approved_at = now(), "
        "updated_at = now() WHERE user_id = %s AND approval_state = 'pending'",
        (user_id,),
    )
    return cur.rowcount == 1


async def email_registered(conn: Connection, email: str) -> bool:
    """True when a user has this (normalized) address."""
    cur = await conn.execute("SELECT 1 FROM auth.users WHERE email = %s", (email,))
    return await cur.fetchone() is not None


async def replace_roles(conn: Connection, user_id: UUID | str, roles: list[str]) -> None:
    """Set the user's roles to exactly `roles`."""
    await conn.execute("DELETE FROM auth.user_roles WHERE user_id = %s", (user_id,))
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO auth.user_roles (user_id, role) VALUES (%s, %s)",
            [(user_id, role) for role in roles],
        )
    await touch_user(conn, user_id)


async def touch_user(conn: Connection, user_id: UUID | str, **changes: Any) -> None:
    """Apply `changes` (password_hash, email_verified, disabled) and bump updated_at."""
    allowed = {"password_hash", "email_verified", "disabled"}
    if not set(changes) <= allowed:
        raise ValueError(f"cannot change {sorted(set(changes) - allowed)}")
    assignments = "".join(f", {name} = %s" for name in changes)
    await conn.execute(
        f"UPDATE auth.users SET updated_at = now(){assignments} WHERE user_id = %s",  # noqa: S608 - names from the allow-list above
        (*changes.values(), user_id),
    )


async def other_enabled_admins(conn: Connection, clinic_id: str, user_id: UUID | str) -> int:
    """How many enabled admins the clinic has besides `user_id` (rows locked: no race)."""
    cur = await conn.execute(
        "SELECT u.user_id FROM auth.users u JOIN auth.user_roles r USING (user_id) "
        "WHERE u.clinic_id = %s AND r.role = 'admin' AND NOT u.disabled AND u.user_id <> %s "
        "FOR UPDATE OF u",
        (clinic_id, user_id),
    )
    return len(await cur.fetchall())


# --- one-time e-mail tokens ------------------------------------------------------------


async def insert_email_token(
    conn: Connection, token: str, user_id: UUID | str, purpose: str, ttl_s: int
) -> datetime:
    """Store the hash of a one-time token; returns when it expires."""
    async with conn.cursor(row_factory=scalar_row) as cur:
        await cur.execute(
            "INSERT INTO auth.email_tokens (token_hash, user_id, purpose, expires_at) "
            "VALUES (%s, %s, %s, now() + %s) RETURNING expires_at",
            (digest(token), user_id, purpose, timedelta(seconds=ttl_s)),
        )
        return await cur.fetchone()  # type: ignore[return-value]


async def email_token_user(conn: Connection, token: str, purpose: str) -> UUID | None:
    """The token's user if the token is known, unused and unexpired; uses nothing up (so a
    caller can refuse a bad token before any expensive work)."""
    async with conn.cursor(row_factory=scalar_row) as cur:
        await cur.execute(
            "SELECT user_id FROM auth.email_tokens WHERE token_hash = %s AND purpose = %s "
            "AND used_at IS NULL AND expires_at > now()",
            (digest(token), purpose),
        )
        return await cur.fetchone()


async def consume_email_token(conn: Connection, token: str, purpose: str) -> UUID | None:
    """Mark the token used and return its user, if it is known, unused and unexpired."""
    async with conn.cursor(row_factory=scalar_row) as cur:
        await cur.execute(
            "UPDATE auth.email_tokens SET used_at = now() WHERE token_hash = %s AND purpose = %s "
            "AND used_at IS NULL AND expires_at > now() RETURNING user_id",
            (digest(token), purpose),
        )
        return await cur.fetchone()


# --- invitations -----------------------------------------------------------------------

_INVITATION = (
    "SELECT invitation_id, clinic_id, email, display_name, roles, created_at, expires_at "
    "FROM auth.invitations"
)


async def insert_invitation(
    conn: Connection,
    *,
    invitation_id: UUID,
    token: str,
    clinic_id: str,
    email: str,
    display_name: str,
    roles: list[str],
    invited_by: UUID | str,
    ttl_s: int,
) -> Row:
    """Store an invitation (its token hashed), revoking the open ones to the same address."""
    await conn.execute(
        "UPDATE auth.invitations SET revoked_at = now() WHERE email = %s "
        "AND accepted_at IS NULL AND revoked_at IS NULL",
        (email,),
    )
    cur = await conn.execute(
        "INSERT INTO auth.invitations (invitation_id, token_hash, clinic_id, email, "
        "display_name, roles, invited_by, expires_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, now() + %s) "
        "RETURNING invitation_id, clinic_id, email, display_name, roles, created_at, expires_at",
        (
            invitation_id,
            digest(token),
            clinic_id,
            email,
            display_name,
            roles,
            invited_by,
            timedelta(seconds=ttl_s),
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    return row


async def open_invitation(conn: Connection, token: str, *, lock: bool = False) -> Row | None:
    """The invitation of `token` if it is neither expired, accepted nor revoked."""
    cur = await conn.execute(
        _INVITATION + " WHERE token_hash = %s AND accepted_at IS NULL AND revoked_at IS NULL "
        "AND expires_at > now()" + (" FOR UPDATE" if lock else ""),
        (digest(token),),
    )
    return await cur.fetchone()


async def mark_invitation_accepted(
    conn: Connection, invitation_id: UUID, user_id: UUID | str
) -> None:
    """The invitation has become `user_id`; its token never works again."""
    await conn.execute(
        "UPDATE auth.invitations SET accepted_at = now(), accepted_user = %s "
        "WHERE invitation_id = %s",
        (user_id, invitation_id),
    )


# --- refresh tokens --------------------------------------------------------------------


async def insert_refresh_token(
    conn: Connection,
    *,
    token_id: UUID,
    family_id: UUID,
    user_id: UUID | str,
    token: str,
    ttl_s: int,
) -> datetime:
    """Store a refresh token's hash in its family; returns when it expires."""
    async with conn.cursor(row_factory=scalar_row) as cur:
        await cur.execute(
            "INSERT INTO auth.refresh_tokens "
            "(token_id, family_id, user_id, token_hash, expires_at) "
            "VALUES (%s, %s, %s, %s, now() + %s) RETURNING expires_at",
            (token_id, family_id, user_id, digest(token), timedelta(seconds=ttl_s)),
        )
        return await cur.fetchone()  # type: ignore[return-value]


async def refresh_token_for_update(conn: Connection, token: str) -> Row | None:
    """The stored refresh token (locked), with `expired` computed by the database clock."""
    cur = await conn.execute(
        "SELECT token_id, family_id, user_id, rotated_at, revoked_at, "
        "expires_at <= now() AS expired FROM auth.refresh_tokens WHERE token_hash = %s FOR UPDATE",
        (digest(token),),
    )
    return await cur.fetchone()


async def mark_rotated(conn: Connection, token_id: UUID) -> None:
    """The token has been exchanged for a successor; presenting it again is reuse."""
    await conn.execute(
        "UPDATE auth.refresh_tokens SET rotated_at = now() WHERE token_id = %s", (token_id,)
    )


async def revoke_family(conn: Connection, family_id: UUID, reason: str) -> int:
    """Revoke every live token of a login's family; returns how many."""
    cur = await conn.execute(
        "UPDATE auth.refresh_tokens SET revoked_at = now(), revoke_reason = %s "
        "WHERE family_id = %s AND revoked_at IS NULL",
        (reason, family_id),
    )
    return cur.rowcount


async def revoke_user_refresh_tokens(conn: Connection, user_id: UUID | str, reason: str) -> int:
    """Revoke every live refresh token of a user (password change, disable)."""
    cur = await conn.execute(
        "UPDATE auth.refresh_tokens SET revoked_at = now(), revoke_reason = %s "
        "WHERE user_id = %s AND revoked_at IS NULL",
        (reason, user_id),
    )
    return cur.rowcount


# --- signing keys ----------------------------------------------------------------------


async def active_signing_key(conn: Connection) -> Row | None:
    """The key that signs new tokens."""
    cur = await conn.execute(
        "SELECT kid, alg, private_key_encrypted, created_at FROM auth.signing_keys "
        "WHERE retired_at IS NULL"
    )
    return await cur.fetchone()


async def retire_active_signing_key(conn: Connection, publish_for: timedelta) -> str | None:
    """Retire the active key (erasing its private half); returns its kid. Serialised."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('svc_auth.signing_keys'))")
    async with conn.cursor(row_factory=scalar_row) as cur:
        await cur.execute(
            "UPDATE auth.signing_keys SET retired_at = now(), publish_until = now() + %s, "
            "private_key_encrypted = NULL WHERE retired_at IS NULL RETURNING kid",
            (publish_for,),
        )
        return await cur.fetchone()


async def insert_signing_key(conn: Connection, jwk: dict[str, Any], encrypted: bytes) -> None:
    """Add a new active key."""
    await conn.execute(
        "INSERT INTO auth.signing_keys (kid, alg, public_jwk, private_key_encrypted) "
        "VALUES (%s, %s, %s, %s)",
        (jwk["kid"], jwk["alg"], Jsonb(jwk), encrypted),
    )


async def published_jwks(conn: Connection) -> list[dict[str, Any]]:
    """Public JWKs: the active key, then retired keys whose tokens may still be valid."""
    async with conn.cursor(row_factory=scalar_row) as cur:
        await cur.execute(
            "SELECT public_jwk FROM auth.signing_keys "
            "WHERE retired_at IS NULL OR publish_until > now() "
            "ORDER BY retired_at DESC NULLS FIRST, created_at DESC"
        )
        return list(await cur.fetchall())


# --- mail outbox -----------------------------------------------------------------------


async def insert_mail(
    conn: Connection, recipient: str, subject: str, body_text: str, body_html: str
) -> None:
    """Queue a mail."""
    await conn.execute(
        "INSERT INTO auth.mail_outbox (recipient, subject, body_text, body_html) "
        "VALUES (%s, %s, %s, %s)",
        (recipient, subject, body_text, body_html),
    )


async def lease_due_mail(conn: Connection, limit: int, *, lease_s: int) -> list[Row]:
    """Claim up to `limit` due mails for `lease_s` seconds (other replicas skip them)."""
    cur = await conn.execute(
        "UPDATE auth.mail_outbox SET lease_until = now() + %s, attempts = attempts + 1 "
        "WHERE id IN (SELECT id FROM auth.mail_outbox WHERE failed_at IS NULL "
        "AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now()) "
        "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
        "RETURNING id, recipient, subject, body_text, body_html, attempts",
        (timedelta(seconds=lease_s), limit),
    )
    return sorted(await cur.fetchall(), key=lambda row: row["id"])


async def mail_failed(
    conn: Connection, mail_id: int, *, error: str, retry_in_s: float, give_up: bool
) -> None:
    """Record a failed attempt: retry later, or give up for good."""
    await conn.execute(
        "UPDATE auth.mail_outbox SET last_error = %s, lease_until = NULL, "
        "next_attempt_at = now() + %s, failed_at = CASE WHEN %s THEN now() END WHERE id = %s",
        (error, timedelta(seconds=retry_in_s), give_up, mail_id),
    )


async def delete_mail(conn: Connection, mail_id: int) -> None:
    """The server accepted the mail."""
    await conn.execute("DELETE FROM auth.mail_outbox WHERE id = %s", (mail_id,))
