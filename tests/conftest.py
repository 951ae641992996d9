"""Shared fixtures: the dependencies (PostgreSQL, Redis, NATS JetStream, S3) for the session,
and per-test names (a fresh database, a unique prefix) so tests run in any order."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql
from support.models import model_base_dir, model_server_address  # noqa: F401 - fixtures
from support.roles import DatabaseRoles, created_database_roles
from support.tokens import TokenFactory

from medmesh.launcher import DEPENDENCY_ENV, EmbeddedDependencies


@pytest.fixture(scope="session")
def dependency_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """MEDMESH_* URL per dependency: the configured one, else an embedded server for the session."""
    with EmbeddedDependencies(tmp_path_factory.mktemp("dependencies"), os.environ) as urls:
        yield urls


@pytest.fixture(scope="session")
def postgres_url(dependency_urls: dict[str, str]) -> str:
    """URL of the session's PostgreSQL server (its `medmesh` database)."""
    return dependency_urls[DEPENDENCY_ENV["postgres"]]


@pytest.fixture(scope="session")
def redis_url(dependency_urls: dict[str, str]) -> str:
    """URL of the session's Redis server."""
    return dependency_urls[DEPENDENCY_ENV["redis"]]


@pytest.fixture(scope="session")
def nats_url(dependency_urls: dict[str, str]) -> str:
    """URL of the session's NATS server with JetStream."""
    return dependency_urls[DEPENDENCY_ENV["nats"]]


@pytest.fixture(scope="session")
def s3_url(dependency_urls: dict[str, str]) -> str:
    """URL of the session's S3 endpoint, access key and secret in the userinfo."""
    return dependency_urls[DEPENDENCY_ENV["s3"]]


@pytest.fixture
def name_prefix() -> str:
    """Short unique lowercase prefix for this test's Redis keys, streams, subjects and buckets."""
    return f"t{secrets.token_hex(3)}"


@pytest.fixture
def database_url(postgres_url: str) -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this test, dropped (with FORCE) afterwards."""
    name = f"t_{secrets.token_hex(4)}"
    database = sql.Identifier(name)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(database))
    yield urlsplit(postgres_url)._replace(path=f"/{name}").geturl()
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))


@pytest.fixture(scope="session")
def tokens() -> TokenFactory:
    """Mints access tokens; `tokens.verifier()` is what services under test verify with."""
    return TokenFactory()


@pytest.fixture
def database_roles(database_url: str, name_prefix: str) -> Iterator[DatabaseRoles]:
    """This test's database with a migration role and one role per service, as `medmesh up`
    makes them (names prefixed: roles are cluster-wide); database and roles dropped after."""
    with created_database_roles(database_url, name_prefix) as roles:
        yield roles
