"""Self-service account flows: register, verify e-mail, log in, change and reset passwords
(invitations are in svc_auth.invitations).

Registration joins an existing clinic as a `viewer` *pending approval*: its tokens carry no
roles, so it reaches no clinic data until an admin of the clinic approves it (ApproveUser).
An invitation is the way in without that wait: the admin chose the address and the roles.
Clinics and their first admin come from the bootstrap (svc_auth.bootstrap), so nobody can
create a clinic and crown themselves its admin.

No user enumeration at login: an unknown e-mail and a wrong password give the same
UNAUTHENTICATED and cost the same argon2 verification. Only a caller who knows the password
learns that the address is unverified or disabled.

CPU: argon2 is the expensive step, so every flow checks its rate limits, and the token it
was given, before hashing anything. Login counts each attempt per account and per client IP
before the password check (a success clears the account's count and gives the IP's back).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from medmesh.audit import Actor, record_audit_event
from medmesh.db import Database
from medmesh.errors import (
    AlreadyExists,
    DependencyUnavailable,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from medmesh.identity import VIEWER, Identity
from svc_auth import mail, store
from svc_auth.config import AuthConfig, Rate
from svc_auth.passwords import (
    MAX_EMAIL_LENGTH,
    MAX_PASSWORD_LENGTH,
    PasswordHashing,
    clinic_id_violation,
    display_name_violation,
    email_violation,
    normalize_email,
    password_violation,
)
from svc_auth.ratelimit import RateLimiter
from svc_auth.sessions import Sessions, TokenPair

Row = dict[str, Any]
ANONYMOUS = Actor("anonymous")


@dataclass(frozen=True)
class LoginResult:
    """A signed-in user and their tokens."""

    user: Row
    tokens: TokenPair


def account_key(email: str) -> str:
    """The name of an address in rate-limit keys and audit details (a hash)."""
    # Rate-limit keys name the address by hash: Redis holds no e-mail addresses.
    return hashlib.sha256(email.encode()).hexdigest()[:32]


async def enforce_limit(limiter: RateLimiter, bucket: str, subject: str, rate: Rate) -> None:
    """Count one request against the bucket; RESOURCE_EXHAUSTED (with the wait) if over."""
    verdict = await limiter.hit(bucket, subject, rate)
    if not verdict.allowed:
        raise ResourceExhausted("too many requests; try again later", verdict.retry_after_s)


def mail_time(moment: datetime) -> str:
    """When a mailed link stops working, as the mail says it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def require_valid(violations: list[FieldViolation | None]) -> None:
    """INVALID_ARGUMENT naming every violation found, if any."""
    found = [v for v in violations if v is not None]
    if found:
        raise InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in found), found)


class Accounts:
    """The account flows over PostgreSQL (users, tokens, outbox) and Redis (limits)."""

    def __init__(
        self,
        database: Database,
        hashing: PasswordHashing,
        sessions: Sessions,
        limiter: RateLimiter,
        config: AuthConfig,
        *,
        mail_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._database = database
        self._hashing = hashing
        self._sessions = sessions
        self._limiter = limiter
        self._config = config
        self._mail_queued = mail_queued

    async def register(
        self, *, email: str, password: str, display_name: str, clinic_id: str, client_ip: str
    ) -> Row:
        """Create an unverified `viewer` of the clinic and queue the verification mail."""
        email = normalize_email(email)
        require_valid(
            [
                email_violation("email", email),
                password_violation("password", password, email=email),
                display_name_violation("display_name", display_name),
                clinic_id_violation("clinic_id", clinic_id),
            ]
        )
        await self._limit("mail-ip", client_ip, self._config.mail_requests_per_ip)
        await self._limit(
            "mail-address", account_key(email), self._config.mail_requests_per_address
        )
        async with self._database.read_connection() as conn:
            if not await store.clinic_exists(conn, clinic_id):
                raise InvalidArgument.for_field("clinic_id", "is not a known clinic")
            if await store.email_registered(conn, email):
                raise AlreadyExists("the e-mail address is already registered")
        password_hash = await self._hashing.hash(password)
        token = secrets.token_urlsafe(32)
        try:
            async with self._database.transaction() as conn:
                user = await store.insert_user(
                    conn,
                    user_id=uuid.uuid4(),
                    clinic_id=clinic_id,
                    email=email,
                    display_name=display_name.strip(),
                    password_hash=password_hash,
                    roles=[VIEWER],
                    approval_state="pending",
                )
                await self._queue_token_mail(conn, user, token, "verify_email")
                await record_audit_event(
                    conn,
                    clinic_id=clinic_id,
                    actor=Actor(str(user["user_id"]), user["roles"]),
                    action="auth.user.register",
                    resource=f"users/{user['user_id']}",
                    detail={"client_ip": client_ip},
                )
        except psycopg.errors.UniqueViolation:
            raise AlreadyExists("the e-mail address is already registered") from None
        self._mail_queued()
        return user

    async def verify_email(self, token: str, *, client_ip: str) -> Row:
        """Mark the token's user verified; the token works once."""
        if not token:
            raise InvalidArgument.for_field("token", "is required")
        await self._limit("token-ip", client_ip, self._config.token_attempts_per_ip)
        async with self._database.transaction() as conn:
            user_id = await store.consume_email_token(conn, token, "verify_email")
            if user_id is None:
                raise FailedPrecondition("the verification token is unknown, expired or used")
            await store.touch_user(conn, user_id, email_verified=True)
            user = await store.user_by_id(conn, user_id)
            assert user is not None
            await record_audit_event(
                conn,
                clinic_id=user["clinic_id"],
                actor=Actor(str(user_id), user["roles"]),
                action="auth.user.verify_email",
                resource=f"users/{user_id}",
            )
        return user

    async def login(self, *, email: str, password: str, client_ip: str) -> LoginResult:
        """Check the password (throttled per account and per IP) and start a session."""
        email = normalize_email(email)
        require_valid(
            [
                None if email else FieldViolation("email", "is required"),
                None if password else FieldViolation("password", "is required"),
            ]
        )
        self._hashing.refuse_if_busy()
        account = account_key(email)
        await self._count_login_attempt(account, client_ip)
        user = None
        if len(email) <= MAX_EMAIL_LENGTH and len(password) <= MAX_PASSWORD_LENGTH:
            try:
                async with self._database.read_connection() as conn:
                    user = await store.user_by_email(conn, email)
            except DependencyUnavailable:
                # Nothing was checked: a client retrying through a PostgreSQL outage must
                # not lock its account out.
                await self._give_back_login_attempt(account, client_ip)
                raise
        if not await self._hashing.verify(user["password_hash"] if user else None, password):
            await self._record_failed_login(account, client_ip, user)
            raise Unauthenticated("wrong e-mail or password")
        assert user is not None
        await self._login_succeeded(account, client_ip)
        if not user["email_verified"]:
            raise FailedPrecondition("the e-mail address is not verified yet")
        if user["disabled"]:
            raise PermissionDenied("the user is disabled")
        new_hash = None
        if self._hashing.needs_rehash(user["password_hash"]):
            new_hash = await self._hashing.hash(password)
        async with self._database.transaction() as conn:
            if new_hash:
                await store.touch_user(conn, user["user_id"], password_hash=new_hash)
            tokens = await self._sessions.start(conn, user)
            await record_audit_event(
                conn,
                clinic_id=user["clinic_id"],
                actor=Actor(str(user["user_id"]), user["roles"]),
                action="auth.login",
                resource=f"users/{user['user_id']}",
                detail={"client_ip": client_ip, "jti": tokens.access.jti},
            )
        return LoginResult(user, tokens)

    async def get_me(self, caller: Identity) -> Row:
        """The caller's own user."""
        async with self._database.read_connection() as conn:
            user = await store.user_by_id(conn, caller.user_id, clinic_id=caller.clinic_id)
        if user is None:
            raise NotFound("the user does not exist")
        return user

    async def change_password(self, caller: Identity, current: str, new: str) -> None:
        """Replace the caller's password and end all their sessions."""
        user = await self.get_me(caller)
        require_valid([password_violation("new_password", new, email=user["email"])])
        account = account_key(user["email"])
        await self._count_login_attempt(account, "")
        if not await self._hashing.verify(user["password_hash"], current[:MAX_PASSWORD_LENGTH]):
            raise Unauthenticated("current_password is wrong")
        await self._login_succeeded(account, "")
        new_hash = await self._hashing.hash(new)
        async with self._database.transaction() as conn:
            await store.touch_user(conn, user["user_id"], password_hash=new_hash)
            revoked = await store.revoke_user_refresh_tokens(conn, user["user_id"], "password")
            await record_audit_event(
                conn,
                clinic_id=user["clinic_id"],
                actor=Actor(caller.user_id, sorted(caller.roles)),
                action="auth.user.change_password",
                resource=f"users/{user['user_id']}",
                detail={"revoked_refresh_tokens": revoked},
            )

    async def request_password_reset(self, *, email: str, client_ip: str) -> None:
        """Mail a reset token when the address belongs to an enabled user; silent otherwise."""
        email = normalize_email(email)
        require_valid([email_violation("email", email)])
        await self._limit("mail-ip", client_ip, self._config.mail_requests_per_ip)
        await self._limit(
            "mail-address", account_key(email), self._config.mail_requests_per_address
        )
        async with self._database.transaction() as conn:
            user = await store.user_by_email(conn, email)
            if user is None or user["disabled"]:
                return
            await self._queue_token_mail(conn, user, secrets.token_urlsafe(32), "password_reset")
            await record_audit_event(
                conn,
                clinic_id=user["clinic_id"],
                actor=ANONYMOUS,
                action="auth.user.request_password_reset",
                resource=f"users/{user['user_id']}",
                detail={"client_ip": client_ip},
            )
        self._mail_queued()

    async def reset_password(self, *, token: str, new_password: str, client_ip: str) -> None:
        """Set a new password with a reset token (once) and end all the user's sessions.

        Limits, then the token, then the password rules, and only then argon2: a stranger's
        bad token or weak password costs a Redis call and an indexed lookup, never a hash.
        """
        require_valid(
            [
                None if token else FieldViolation("token", "is required"),
                password_violation("new_password", new_password),
            ]
        )
        await self._limit("token-ip", client_ip, self._config.token_attempts_per_ip)
        async with self._database.read_connection() as conn:
            user_id = await store.email_token_user(conn, token, "reset_password")
            user = await store.user_by_id(conn, user_id) if user_id else None
        if user_id is None or user is None:
            raise FailedPrecondition("the reset token is unknown, expired or used")
        await self._limit("token-account", str(user_id), self._config.token_attempts_per_account)
        require_valid([password_violation("new_password", new_password, email=user["email"])])
        new_hash = await self._hashing.hash(new_password)
        async with self._database.transaction() as conn:
            if await store.consume_email_token(conn, token, "reset_password") != user_id:
                raise FailedPrecondition("the reset token is unknown, expired or used")
            # Following the mailed link proves the address, as verification would.
            await store.touch_user(conn, user_id, password_hash=new_hash, email_verified=True)
            revoked = await store.revoke_user_refresh_tokens(conn, user_id, "password_reset")
            await record_audit_event(
                conn,
                clinic_id=user["clinic_id"],
                actor=Actor(str(user_id), user["roles"]),
                action="auth.user.reset_password",
                resource=f"users/{user_id}",
                detail={"revoked_refresh_tokens": revoked, "client_ip": client_ip},
            )

    # --- helpers ---------------------------------------------------------------------

    @property
    def _failure_rate(self) -> Rate:
        return self._config.login_failures_per_account

    async def _limit(self, bucket: str, subject: str, rate: Rate) -> None:
        await enforce_limit(self._limiter, bucket, subject, rate)

    async def _count_login_attempt(self, account: str, client_ip: str) -> None:
        # Counted before the password is hashed, so a burst (even a concurrent one) costs
        # at most the limit in argon2 work; a refused attempt hashes nothing.
        checks = [("login-account", account, self._failure_rate)]
        if client_ip:
            checks.insert(0, ("login-ip", client_ip, self._config.login_failures_per_ip))
        for bucket, subject, rate in checks:
            verdict = await self._limiter.hit(bucket, subject, rate)
            if not verdict.allowed:
                raise ResourceExhausted(
                    "too many sign-in attempts; try again later", verdict.retry_after_s
                )

    async def _give_back_login_attempt(self, account: str, client_ip: str) -> None:
        with contextlib.suppress(DependencyUnavailable):
            await self._limiter.refund("login-account", account, self._failure_rate)
            if client_ip:
                await self._limiter.refund(
                    "login-ip", client_ip, self._config.login_failures_per_ip
                )

    async def _login_succeeded(self, account: str, client_ip: str) -> None:
        # The right password: the account's count starts over, the IP gets its attempt back
        # (a clinic behind one address is not throttled by its own successful sign-ins).
        await self._limiter.reset("login-account", account)
        if client_ip:
            await self._limiter.refund("login-ip", client_ip, self._config.login_failures_per_ip)

    async def _record_failed_login(self, account: str, client_ip: str, user: Row | None) -> None:
        async with self._database.transaction() as conn:
            await record_audit_event(
                conn,
                clinic_id=user["clinic_id"] if user else "",
                actor=ANONYMOUS,
                action="auth.login_failed",
                resource=f"users/{user['user_id']}" if user else "users/unknown",
                detail={"client_ip": client_ip, "account": account},
            )

    async def _queue_token_mail(
        self, conn: psycopg.AsyncConnection[Any], user: Row, token: str, template: str
    ) -> None:
        purpose, ttl_s, page = {
            "verify_email": ("verify_email", self._config.verify_ttl_s, "verify-email"),
            "password_reset": ("reset_password", self._config.reset_ttl_s, "reset-password"),
        }[template]
        expires_at = await store.insert_email_token(conn, token, user["user_id"], purpose, ttl_s)
        context = {
            "display_name": user["display_name"],
            "clinic_id": user["clinic_id"],
            "token": token,
            # In the fragment: browsers never send it to a server, so the token stays out of
            # access logs and Referer headers; the web app reads it from location.hash.
            "link": f"{self._config.public_url}/{page}#token={token}",
            "expires_at": mail_time(expires_at),
        }
        await mail.enqueue(conn, mail.render(template, user["email"], context))
