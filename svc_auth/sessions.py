"""Access tokens (signed JWTs) and refresh tokens (opaque, stored hashed, rotated on use).

A login starts a *family* of refresh tokens. RefreshToken marks the presented token rotated
and issues its successor in the same family. A rotated token presented again can only mean
that two parties hold it (a stolen copy, or a replay): the whole family is revoked, which
logs out the thief and the victim alike; the victim signs in again, the thief cannot.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
import structlog

from medmesh.audit import Actor, record_audit_event
from medmesh.db import Connection, Database
from medmesh.errors import PermissionDenied, Unauthenticated
from medmesh.identity import Identity
from svc_auth import store
from svc_auth.keys import KeyRing
from svc_auth.revocation import RevocationList

_log = structlog.get_logger("svc_auth.sessions")


@dataclass(frozen=True)
class AccessToken:
    """A signed access token and when it expires."""

    token: str
    jti: str
    expires_at: datetime
    lifetime_s: int


@dataclass(frozen=True)
class TokenPair:
    """What Login and RefreshToken return."""

    access: AccessToken
    refresh_token: str
    refresh_expires_at: datetime


class TokenIssuer:
    """Signs access tokens with the active key: sub, clinic, roles, iss, aud, exp, iat, nbf,
    jti claims and the key's `kid` in the header."""

    def __init__(self, ring: KeyRing, *, issuer: str, audience: str, lifetime_s: int) -> None:
        self._ring = ring
        self._issuer = issuer
        self._audience = audience
        self.lifetime_s = lifetime_s

    async def issue(self, user_id: str, clinic_id: str, roles: Iterable[str]) -> AccessToken:
        """A fresh access token for the user."""
        key = await self._ring.active()
        now = int(time.time())
        jti = str(uuid.uuid4())
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": user_id,
            "clinic": clinic_id,
            "roles": sorted(roles),
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime_s,
            "jti": jti,
        }
        token = jwt.encode(
            claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid}
        )
        return AccessToken(
            token=token,
            jti=jti,
            expires_at=datetime.fromtimestamp(now + self.lifetime_s, tz=UTC),
            lifetime_s=self.lifetime_s,
        )


class Sessions:
    """Token pairs: start at login, rotate on refresh, revoke on logout or reuse."""

    def __init__(
        self,
        database: Database,
        issuer: TokenIssuer,
        revocations: RevocationList,
        *,
        refresh_ttl_s: int,
    ) -> None:
        self._database = database
        self._issuer = issuer
        self._revocations = revocations
        self._refresh_ttl_s = refresh_ttl_s

    async def start(self, conn: Connection, user: Mapping[str, Any]) -> TokenPair:
        """A new family for `user` (inside the login's transaction)."""
        return await self._pair(conn, user, family_id=uuid.uuid4())

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Exchange a refresh token for a new pair; reuse of a rotated one revokes the family."""
        reused_family = None
        async with self._database.transaction() as conn:
            row = await store.refresh_token_for_update(conn, refresh_token)
            if row is None or row["revoked_at"] is not None or row["expired"]:
                raise Unauthenticated("refresh token is unknown, expired or revoked")
            if row["rotated_at"] is not None:
                reused_family = row["family_id"]
                revoked = await store.revoke_family(conn, row["family_id"], "reuse")
                user = await store.user_by_id(conn, row["user_id"])
                await record_audit_event(
                    conn,
                    clinic_id=user["clinic_id"] if user else "",
                    actor=Actor(str(row["user_id"])),
                    action="auth.refresh_token.reuse",
                    resource=f"users/{row['user_id']}",
                    detail={"family_id": str(row["family_id"]), "revoked": revoked},
                )
            else:
                user = await store.user_by_id(conn, row["user_id"])
                if user is None:
                    raise Unauthenticated("refresh token is unknown, expired or revoked")
                if user["disabled"]:
                    raise PermissionDenied("the user is disabled")
                await store.mark_rotated(conn, row["token_id"])
                return await self._pair(conn, user, family_id=row["family_id"])
        # Committed: the family stays revoked even though this call fails.
        _log.warning("refresh token reuse: family revoked", family_id=str(reused_family))
        raise Unauthenticated("refresh token was already used; every session of it is revoked")

    async def logout(self, refresh_token: str, caller: Identity | None) -> None:
        """Revoke the refresh token's family, and the caller's access token when it sent one.

        Idempotent: an unknown or revoked refresh token succeeds too.
        """
        async with self._database.transaction() as conn:
            row = await store.refresh_token_for_update(conn, refresh_token)
            if row is not None:
                revoked = await store.revoke_family(conn, row["family_id"], "logout")
                user = await store.user_by_id(conn, row["user_id"])
                if revoked and user is not None:
                    await record_audit_event(
                        conn,
                        clinic_id=user["clinic_id"],
                        actor=Actor(str(row["user_id"]), user["roles"]),
                        action="auth.logout",
                        resource=f"users/{row['user_id']}",
                        detail={"family_id": str(row["family_id"]), "revoked": revoked},
                    )
        if caller is not None and caller.token_id:
            await self._revocations.revoke_token(caller.token_id)

    async def _pair(
        self, conn: Connection, user: Mapping[str, Any], *, family_id: uuid.UUID
    ) -> TokenPair:
        refresh_token = secrets.token_urlsafe(32)
        refresh_expires = await store.insert_refresh_token(
            conn,
            token_id=uuid.uuid4(),
            family_id=family_id,
            user_id=user["user_id"],
            token=refresh_token,
            ttl_s=self._refresh_ttl_s,
        )
        access = await self._issuer.issue(
            str(user["user_id"]), user["clinic_id"], token_roles(user)
        )
        return TokenPair(access, refresh_token, refresh_expires)


def token_roles(user: Mapping[str, Any]) -> list[str]:
    """The roles an access token carries: the user's, once approved; none while pending, so
    every role rule of every service refuses the token (only SIGNED_IN RPCs accept it)."""
    return list(user["roles"]) if user["approval_state"] == "approved" else []
