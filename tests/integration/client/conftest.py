"""The SDK and the client CLI against real services: svc_auth (real logins, short-lived
tokens, real refresh) and svc_ingest (verifying those tokens through svc_auth's JWKS), both in
this process on the session's PostgreSQL, Redis, NATS and S3."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from support.serving import served

from medmesh.client import Endpoints, MedmeshClient
from medmesh.migrate import service_migrations
from medmesh.settings import Settings
from svc_auth.app import setup as auth_setup
from svc_ingest.app import setup as ingest_setup

CLINIC = "clinic-sdk"
ADMIN_EMAIL = "admin@clinic-sdk.example"
PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Mesh:
    """Addresses of the services under test and their settings."""

    auth: str
    ingest: str
    auth_settings: Settings

    @property
    def endpoints(self) -> Endpoints:
        """What a client is given: one address per service."""
        return Endpoints(by_area={"auth": self.auth, "ingest": self.ingest})


@pytest.fixture
def auth_env() -> dict[str, str]:
    """MEDMESH_AUTH_* overrides for this test's svc_auth (override to change)."""
    return {}


@pytest.fixture
async def auth_address(
    database_url: str, redis_url: str, name_prefix: str, tmp_path: Path, auth_env: dict[str, str]
) -> AsyncIterator[tuple[str, Settings]]:
    """svc_auth with a bootstrap admin of CLINIC, cheap argon2, no mail."""
    settings = Settings(
        service="auth",
        postgres_url=database_url,
        redis_url=redis_url,
        subject_root=name_prefix,
        stream_prefix=name_prefix.upper(),
        ready_file=tmp_path / "auth.json",
        metrics_addr="",
        grace_period_s=1,
        extra={
            "MEDMESH_AUTH_KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "MEDMESH_AUTH_BOOTSTRAP_CLINIC": CLINIC,
            "MEDMESH_AUTH_BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
            "MEDMESH_AUTH_BOOTSTRAP_ADMIN_PASSWORD": PASSWORD,
            "MEDMESH_AUTH_ARGON2_MEMORY_KIB": "8192",
            **auth_env,
        },
    )
    async with served(settings, auth_setup, migrations=service_migrations("auth")) as ready:
        yield ready["grpc"], settings


@pytest.fixture
def ingest_env() -> dict[str, str]:
    """MEDMESH_INGEST_* overrides for this test's svc_ingest (override to change)."""
    return {}


@pytest.fixture
async def mesh(
    auth_address: tuple[str, Settings],
    ingest_env: dict[str, str],
    database_url: str,
    nats_url: str,
    s3_url: str,
    name_prefix: str,
    tmp_path: Path,
) -> AsyncIterator[Mesh]:
    """svc_auth and svc_ingest; svc_ingest verifies tokens with svc_auth's published keys."""
    auth, auth_settings = auth_address
    settings = Settings(
        service="ingest",
        postgres_url=database_url,
        nats_url=nats_url,
        s3_url=s3_url,
        auth_addr=auth,
        subject_root=name_prefix,
        stream_prefix=name_prefix.upper(),
        s3_bucket_prefix=name_prefix + "-",
        ready_file=tmp_path / "ingest.json",
        metrics_addr="",
        grace_period_s=1,
        extra=ingest_env,
    )
    async with served(settings, ingest_setup, migrations=service_migrations("ingest")) as ready:
        yield Mesh(auth=auth, ingest=ready["grpc"], auth_settings=auth_settings)


@pytest.fixture
async def client(mesh: Mesh) -> AsyncIterator[MedmeshClient]:
    """An SDK client of the mesh, logged in as CLINIC's admin."""
    async with MedmeshClient(mesh.endpoints) as sdk:
        await sdk.login(ADMIN_EMAIL, PASSWORD)
        yield sdk
