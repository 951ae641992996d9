"""Helpers for svc_auth tests: an in-memory SMTP mailbox, the running service and its settings."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import grpc
import psycopg

from gen.medmesh.auth.v1 import LoginRequest, RegisterRequest, VerifyEmailRequest
from medmesh.client import AsyncStub
from medmesh.contract import DescriptorImage
from medmesh.db import Database
from medmesh.migrate import service_migrations
from medmesh.runtime import serve
from medmesh.settings import Settings
from svc_auth.app import setup
from svc_auth.bootstrap import ensure_account
from svc_auth.config import BootstrapAccount
from svc_auth.passwords import PasswordHashing

AUTH = "medmesh.auth.v1.AuthService"
CLINIC_A = "clinic-a"
CLINIC_B = "clinic-b"
PASSWORD = "correct horse battery staple"
ADMIN_EMAIL = "admin@clinic-a.example"
_TOKEN = re.compile(r"token=([A-Za-z0-9_-]+)")


class Mailbox:
    """An aiosmtpd handler keeping messages in memory; can refuse the first N with a 451."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.refuse_next = 0
        self.refused = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        """Accept (250) or, while `refuse_next` > 0, fail transiently (451)."""
        with self._lock:
            if self.refuse_next > 0:
                self.refuse_next -= 1
                self.refused += 1
                return "451 4.3.0 try again later"
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.messages.append(message)  # type: ignore[arg-type]
        return "250 OK"

    async def wait_for(
        self, recipient: str, *, count: int = 1, timeout_s: float = 15
    ) -> EmailMessage:
        """The `count`-th message to `recipient`, waiting for it to arrive."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                found = [m for m in self.messages if m["To"] == recipient]
            if len(found) >= count:
                return found[count - 1]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no mail #{count} for {recipient} within {timeout_s} s")

    async def token_for(self, recipient: str, *, count: int = 1) -> str:
        """The one-time token in the `count`-th mail to `recipient` (text part)."""
        message = await self.wait_for(recipient, count=count)
        body = message.get_body(preferencelist=("plain",))
        assert body is not None
        match = _TOKEN.search(body.get_content())
        assert match, body.get_content()
        return match.group(1)


@dataclass
class AuthUnderTest:
    """A running svc_auth and what tests need to talk to it."""

    channel: grpc.aio.Channel
    stub: AsyncStub
    address: str
    settings: Settings
    database: Database
    mailbox: Mailbox
    kek: str
    hashing: PasswordHashing = field(
        default_factory=lambda: PasswordHashing(time_cost=1, memory_kib=8192)
    )

    async def create_user(
        self, clinic_id: str, roles: tuple[str, ...], *, email_address: str | None = None
    ) -> str:
        """A verified account with `roles` (created as the bootstrap does); returns its e-mail."""
        address = email_address or f"u{secrets.token_hex(5)}@{clinic_id}.example"
        await ensure_account(
            self.database, self.hashing, BootstrapAccount(clinic_id, address, PASSWORD, roles)
        )
        return address

    async def login(self, address: str, password: str = PASSWORD) -> Any:
        """LoginResponse for the account."""
        return await self.stub.login(LoginRequest(email=address, password=password))

    async def token(self, clinic_id: str, roles: tuple[str, ...]) -> tuple[str, Any]:
        """(access token, LoginResponse) of a fresh account."""
        response = await self.login(await self.create_user(clinic_id, roles))
        return response.access_token, response

    async def register_and_verify(self, clinic_id: str) -> tuple[str, Any]:
        """A self-registered, verified viewer: (e-mail, RegisterResponse)."""
        address = f"r{secrets.token_hex(5)}@{clinic_id}.example"
        registered = await self.stub.register(
            RegisterRequest(email=address, password=PASSWORD, display_name="R", clinic_id=clinic_id)
        )
        token = await self.mailbox.token_for(address)
        await self.stub.verify_email(VerifyEmailRequest(token=token))
        return address, registered

    def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run SQL against the service's database (assertions on stored rows)."""
        with psycopg.connect(self.settings.postgres_url, autocommit=True) as conn:
            return conn.execute(statement, params).fetchall()  # type: ignore[arg-type]


def auth_settings(
    *,
    postgres_url: str,
    redis_url: str,
    prefix: str,
    smtp_url: str,
    ready_file: Path,
    kek: str,
    extra: Mapping[str, str] = {},
) -> Settings:
    """Settings of a test svc_auth: cheap argon2, generous limits unless `extra` says else."""
    env = {
        "MEDMESH_AUTH_KEY_ENCRYPTION_KEY": kek,
        "MEDMESH_AUTH_BOOTSTRAP_CLINIC": CLINIC_A,
        "MEDMESH_AUTH_BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
        "MEDMESH_AUTH_BOOTSTRAP_ADMIN_PASSWORD": PASSWORD,
        "MEDMESH_AUTH_ARGON2_MEMORY_KIB": "8192",
        "MEDMESH_AUTH_RATE_LIMIT_USER": "10000/60",
        "MEDMESH_AUTH_RATE_LIMIT_IP": "10000/60",
        "MEDMESH_AUTH_MAIL_LIMIT_IP": "10000/60",
        "MEDMESH_AUTH_MAIL_LIMIT_ADDRESS": "100/60",
        "MEDMESH_AUTH_TOKEN_LIMIT_IP": "10000/60",
        **extra,
    }
    return Settings(
        service="auth",
        postgres_url=postgres_url,
        redis_url=redis_url,
        subject_root=prefix,
        stream_prefix=prefix.upper(),
        smtp_url=smtp_url,
        ready_file=ready_file,
        metrics_addr="",
        grace_period_s=1,
        extra=env,
    )


@asynccontextmanager
async def running_auth(
    settings: Settings, mailbox: Mailbox, kek: str
) -> AsyncIterator[AuthUnderTest]:
    """svc_auth serving in this process until the block ends."""
    assert settings.ready_file is not None
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(settings, setup, migrations=service_migrations("auth"), stop=stop)
    )
    while not settings.ready_file.exists():
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    address = json.loads(settings.ready_file.read_text())["grpc"]
    # Other clinics exist only through the bootstrap; clinic-b gets its admin here.
    async with Database(settings.postgres_url, application_name="auth-tests") as database:
        under_test = None
        async with grpc.aio.insecure_channel(address) as channel:
            under_test = AuthUnderTest(
                channel=channel,
                stub=AsyncStub(channel, AUTH, DescriptorImage()),
                address=address,
                settings=settings,
                database=database,
                mailbox=mailbox,
                kek=kek,
            )
            await under_test.create_user(
                CLINIC_B, ("admin",), email_address="admin@clinic-b.example"
            )
            try:
                yield under_test
            finally:
                stop.set()
                await task
