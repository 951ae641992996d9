"""Invitations: an admin of a clinic invites an address with roles; the mail carries a
single-use token (stored hashed) in the link's fragment; accepting creates the account
verified (the token came by mail) and approved (the admin chose the address and the roles).

As everywhere in svc_auth, limits and the token are checked before any argon2 work.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from medmesh.audit import Actor, record_audit_event
from medmesh.db import Database
from medmesh.errors import AlreadyExists, FailedPrecondition, FieldViolation
from medmesh.identity import ALL_ROLES, Identity
from svc_auth import mail, store
from svc_auth.accounts import account_key, enforce_limit, mail_time, require_valid
from svc_auth.config import AuthConfig
from svc_auth.passwords import (
    PasswordHashing,
    display_name_violation,
    email_violation,
    normalize_email,
    password_violation,
)
from svc_auth.ratelimit import RateLimiter

Row = dict[str, Any]


class Invitations:
    """InviteUser and AcceptInvitation over PostgreSQL (invitations, users, outbox) and Redis."""

    def __init__(
        self,
        database: Database,
        hashing: PasswordHashing,
        limiter: RateLimiter,
        config: AuthConfig,
        *,
        mail_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._database = database
        self._hashing = hashing
        self._limiter = limiter
        self._config = config
        self._mail_queued = mail_queued

    async def create(
        self,
        caller: Identity,
        *,
        email: str,
        display_name: str,
        roles: list[str],
        client_ip: str,
    ) -> Row:
        """Mail an invitation to join the caller's clinic with `roles` (admins only)."""
        email = normalize_email(email)
        wanted = sorted(set(roles))
        require_valid(
            [
                email_violation("email", email),
                display_name_violation("display_name", display_name),
                None
                if wanted and set(wanted) <= ALL_ROLES
                else FieldViolation("roles", "must name at least one role, none unspecified"),
            ]
        )
        await enforce_limit(self._limiter, "mail-ip", client_ip, self._config.mail_requests_per_ip)
        await enforce_limit(
            self._limiter,
            "mail-address",
            account_key(email),
            self._config.mail_requests_per_address,
        )
        token = secrets.token_urlsafe(32)
        async with self._database.transaction() as conn:
            if await store.email_registered(conn, email):
                raise AlreadyExists("the e-mail address is already registered")
            invitation = await store.insert_invitation(
                conn,
                invitation_id=uuid.uuid4(),
                token=token,
                clinic_id=caller.clinic_id,
                email=email,
                display_name=display_name.strip(),
                roles=wanted,
                invited_by=caller.user_id,
                ttl_s=self._config.invite_ttl_s,
            )
            context = {
                "display_name": invitation["display_name"],
                "clinic_id": caller.clinic_id,
                "roles": ", ".join(wanted),
                "token": token,
                "link": f"{self._config.public_url}/accept-invitation#token={token}",
                "expires_at": mail_time(invitation["expires_at"]),
            }
            await mail.enqueue(conn, mail.render("invitation", email, context))
            await record_audit_event(
                conn,
                clinic_id=caller.clinic_id,
                actor=Actor(caller.user_id, sorted(caller.roles)),
                action="auth.invitation.create",
                resource=f"invitations/{invitation['invitation_id']}",
                detail={"roles": wanted, "account": account_key(email)},
            )
        self._mail_queued()
        return invitation

    async def accept(self, *, token: str, password: str, display_name: str, client_ip: str) -> Row:
        """Create the invited account: verified, approved, with the invitation's roles."""
        require_valid(
            [
                None if token else FieldViolation("token", "is required"),
                password_violation("password", password),
                display_name_violation("display_name", display_name) if display_name else None,
            ]
        )
        await enforce_limit(
            self._limiter, "token-ip", client_ip, self._config.token_attempts_per_ip
        )
        async with self._database.read_connection() as conn:
            invitation = await store.open_invitation(conn, token)
            registered = invitation is not None and await store.email_registered(
                conn, invitation["email"]
            )
        if invitation is None:
            raise FailedPrecondition("the invitation is unknown, expired, replaced or used")
        email = invitation["email"]
        await enforce_limit(
            self._limiter,
            "token-account",
            account_key(email),
            self._config.token_attempts_per_account,
        )
        require_valid([password_violation("password", password, email=email)])
        if registered:
            raise AlreadyExists("the e-mail address is already registered")
        password_hash = await self._hashing.hash(password)
        try:
            async with self._database.transaction() as conn:
                invitation = await store.open_invitation(conn, token, lock=True)
                if invitation is None:
                    raise FailedPrecondition("the invitation is unknown, expired, replaced or used")
                user = await store.insert_user(
                    conn,
                    user_id=uuid.uuid4(),
                    clinic_id=invitation["clinic_id"],
                    email=email,
                    display_name=display_name.strip() or invitation["display_name"],
                    password_hash=password_hash,
                    roles=list(invitation["roles"]),
                    approval_state="approved",
                    email_verified=True,
                )
                await store.mark_invitation_accepted(
                    conn, invitation["invitation_id"], user["user_id"]
                )
                await record_audit_event(
                    conn,
                    clinic_id=user["clinic_id"],
                    actor=Actor(str(user["user_id"]), user["roles"]),
                    action="auth.invitation.accept",
                    resource=f"users/{user['user_id']}",
                    detail={
                        "invitation": f"invitations/{invitation['invitation_id']}",
                        "client_ip": client_ip,
                    },
                )
        except psycopg.errors.UniqueViolation:
            raise AlreadyExists("the e-mail address is already registered") from None
        return user
