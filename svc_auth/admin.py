"""What a clinic admin does: list the clinic's users, approve, set their roles, disable them;
and what the operator clinic's admins do: rotate the token signing key.

Everything is scoped to the caller's clinic: a user of another clinic is NOT_FOUND, exactly
like a user that does not exist. A clinic is never left without an enabled admin.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from medmesh.audit import Actor, record_audit_event
from medmesh.db import Connection, Database
from medmesh.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from medmesh.identity import ADMIN, ALL_ROLES, Identity
from svc_auth import store
from svc_auth.keys import KeyRing
from svc_auth.revocation import RevocationList

Row = dict[str, Any]
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class UserPage:
    """One page of ListUsers."""

    users: list[Row]
    next_page_token: str


def parse_user_name(name: str) -> uuid.UUID:
    """`users/{uuid}` → the uuid; INVALID_ARGUMENT for anything else."""
    prefix, _, raw = name.partition("/")
    try:
        user_id = uuid.UUID(raw) if prefix == "users" else None
    except ValueError:
        user_id = None
    if user_id is None:
        raise InvalidArgument.for_field("name", "must look like users/{user_id}")
    return user_id


def _encode_page_token(row: Row) -> str:
    raw = f"{row['created_at'].isoformat()}|{row['user_id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_page_token(token: str) -> tuple[datetime, uuid.UUID] | None:
    if not token:
        return None
    try:
        created, _, user_id = base64.urlsafe_b64decode(token.encode()).decode().partition("|")
        return datetime.fromisoformat(created), uuid.UUID(user_id)
    except (ValueError, binascii.Error):
        raise InvalidArgument.for_field("page_token", "is not a token from this list") from None


def _actor(caller: Identity) -> Actor:
    return Actor(caller.user_id, sorted(caller.roles))


class ClinicAdmin:
    """Admin operations, each scoped to the caller's clinic."""

    def __init__(
        self,
        database: Database,
        revocations: RevocationList,
        ring: KeyRing,
        *,
        operator_clinic: str,
    ) -> None:
        self._database = database
        self._revocations = revocations
        self._ring = ring
        self._operator_clinic = operator_clinic

    async def list_users(
        self,
        caller: Identity,
        page_size: int,
        page_token: str,
        approval_state: str | None = None,
    ) -> UserPage:
        """The caller's clinic's users, oldest first (only `approval_state` ones when given)."""
        if page_size < 0:
            raise InvalidArgument.for_field("page_size", "must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_page_token(page_token)
        async with self._database.read_connection() as conn:
            rows = await store.list_users(
                conn, caller.clinic_id, after=after, limit=size + 1, approval_state=approval_state
            )
        more = len(rows) > size
        rows = rows[:size]
        return UserPage(rows, _encode_page_token(rows[-1]) if more else "")

    async def set_roles(self, caller: Identity, name: str, roles: Iterable[str]) -> Row:
        """Replace the user's roles; the clinic keeps at least one enabled admin."""
        user_id = parse_user_name(name)
        wanted = sorted(set(roles))
        if not wanted or not set(wanted) <= ALL_ROLES:
            raise InvalidArgument.for_field(
                "roles", "must name at least one role, none unspecified"
            )
        async with self._database.transaction() as conn:
            user = await self._target(conn, caller, user_id)
            if ADMIN not in wanted:
                await self._keep_an_admin(conn, user)
            await store.replace_roles(conn, user_id, wanted)
            await record_audit_event(
                conn,
                clinic_id=caller.clinic_id,
                actor=_actor(caller),
                action="auth.user.set_roles",
                resource=f"users/{user_id}",
                detail={"old_roles": list(user["roles"]), "new_roles": wanted},
            )
            changed = await store.user_by_id(conn, user_id)
        assert changed is not None
        return changed

    async def approve(self, caller: Identity, name: str) -> Row:
        """Let a pending user of the caller's clinic reach clinic data. Idempotent."""
        user_id = parse_user_name(name)
        async with self._database.transaction() as conn:
            await self._target(conn, caller, user_id)
            if await store.approve_user(conn, user_id):
                await record_audit_event(
                    conn,
                    clinic_id=caller.clinic_id,
                    actor=_actor(caller),
                    action="auth.user.approve",
                    resource=f"users/{user_id}",
                )
            changed = await store.user_by_id(conn, user_id)
        assert changed is not None
        return changed

    async def disable(self, caller: Identity, name: str) -> Row:
        """Disable the user, end their sessions, deny their live access tokens. Idempotent."""
        user_id = parse_user_name(name)
        async with self._database.transaction() as conn:
            user = await self._target(conn, caller, user_id)
            if not user["disabled"]:
                await self._keep_an_admin(conn, user)
                await store.touch_user(conn, user_id, disabled=True)
                revoked = await store.revoke_user_refresh_tokens(conn, user_id, "disabled")
                await record_audit_event(
                    conn,
                    clinic_id=caller.clinic_id,
                    actor=_actor(caller),
                    action="auth.user.disable",
                    resource=f"users/{user_id}",
                    detail={"revoked_refresh_tokens": revoked},
                )
            changed = await store.user_by_id(conn, user_id)
        # Also after a repeated call: re-arms the deny-list if Redis lost it.
        await self._revocations.revoke_user(str(user_id))
        assert changed is not None
        return changed

    async def rotate_signing_key(self, caller: Identity) -> tuple[dict[str, Any], str]:
        """A new active signing key (operator clinic admins only: keys serve every clinic)."""
        if not self._operator_clinic or caller.clinic_id != self._operator_clinic:
            raise PermissionDenied("only admins of the operator clinic may rotate signing keys")
        jwk, retired = await self._ring.rotate()
        async with self._database.transaction() as conn:
            await record_audit_event(
                conn,
                clinic_id=caller.clinic_id,
                actor=_actor(caller),
                action="auth.signing_key.rotate",
                resource=f"signingKeys/{jwk['kid']}",
                detail={"retired_kid": retired},
            )
        return jwk, retired

    @staticmethod
    async def _target(conn: Connection, caller: Identity, user_id: uuid.UUID) -> Row:
        user = await store.user_by_id(conn, user_id, clinic_id=caller.clinic_id, lock=True)
        if user is None:
            raise NotFound("the user does not exist")
        return user

    @staticmethod
    async def _keep_an_admin(conn: Connection, user: Row) -> None:
        if ADMIN in user["roles"] and not user["disabled"]:
            others = await store.other_enabled_admins(conn, user["clinic_id"], user["user_id"])
            if others == 0:
                raise FailedPrecondition("the clinic would be left without an enabled admin")
