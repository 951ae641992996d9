"""svc_auth under test: a real SMTP server (aiosmtpd), the service in-process on a free port
against the session's PostgreSQL and Redis (helpers in auth_harness.py)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from auth_harness import AuthUnderTest, Mailbox, auth_settings, running_auth
from cryptography.fernet import Fernet
from psycopg import sql

from medmesh.mailsink import FreePortController


@pytest.fixture(scope="session")
def smtp() -> Iterator[tuple[FreePortController, Mailbox]]:
    """A real SMTP server on a free port for the session, and its mailbox."""
    mailbox = Mailbox()
    controller = FreePortController(mailbox, hostname="127.0.0.1", port=0)
    controller.start()
    yield controller, mailbox
    controller.stop()


@pytest.fixture
def mailbox(smtp: tuple[FreePortController, Mailbox]) -> Mailbox:
    """The session SMTP server's mailbox (tests use unique addresses, so no reset needed)."""
    return smtp[1]


@pytest.fixture
def auth_extra() -> dict[str, str]:
    """MEDMESH_AUTH_* overrides for this test's svc_auth (override the fixture to change)."""
    return {}


@pytest.fixture
async def auth(
    database_url: str,
    redis_url: str,
    name_prefix: str,
    smtp: tuple[FreePortController, Mailbox],
    tmp_path: Path,
    auth_extra: dict[str, str],
) -> AsyncIterator[AuthUnderTest]:
    """svc_auth on a fresh database and Redis prefix, mailing the session SMTP server."""
    kek = Fernet.generate_key().decode()
    settings = auth_settings(
        postgres_url=database_url,
        redis_url=redis_url,
        prefix=name_prefix,
        smtp_url=smtp[0].url,
        ready_file=tmp_path / "auth.json",
        kek=kek,
        extra=auth_extra,
    )
    async with running_auth(settings, smtp[1], kek) as under_test:
        yield under_test


@pytest.fixture(scope="module")
def module_database_url(postgres_url: str) -> Iterator[str]:
    """A database shared by one module's tests (for a service started once per module)."""
    name = f"m_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield urlsplit(postgres_url)._replace(path=f"/{name}").geturl()
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="module")
async def shared_auth(
    module_database_url: str,
    redis_url: str,
    smtp: tuple[FreePortController, Mailbox],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[AuthUnderTest]:
    """One svc_auth for a whole module (tests must not depend on each other's data)."""
    kek = Fernet.generate_key().decode()
    settings = auth_settings(
        postgres_url=module_database_url,
        redis_url=redis_url,
        prefix=f"m{secrets.token_hex(3)}",
        smtp_url=smtp[0].url,
        ready_file=tmp_path_factory.mktemp("auth") / "auth.json",
        kek=kek,
    )
    async with running_auth(settings, smtp[1], kek) as under_test:
        yield under_test
