"""End to end through the embedded edge with the real svc_auth (PostgreSQL, Redis) deciding
every request via ext_authz, and an ingest upstream that verifies tokens with svc_auth's
published keys: sign in over REST, call with the token, get refused as the policy says."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from edge_harness import Recorder, ScriptedServicer, role_rules, running_edge

from medmesh.auth import AuthInterceptor, GrpcJwksSource, TokenVerifier
from medmesh.contract import DescriptorImage
from medmesh.db import Database
from medmesh.edge import EdgeSettings
from medmesh.migrate import service_migrations
from medmesh.runtime import serve
from medmesh.server import GrpcServer
from medmesh.settings import Settings
from svc_auth.app import setup as auth_setup
from svc_auth.bootstrap import ensure_account
from svc_auth.config import BootstrapAccount
from svc_auth.passwords import PasswordHashing

INGEST = "medmesh.ingest.v1.IngestService"
CLINIC = "clinic-e2e"
ADMIN = "admin@clinic-e2e.example"
PASSWORD = "correct horse battery staple"


@dataclass
class Stack:
    """The edge URL, what reached the ingest upstream, and svc_auth's database."""

    url: str
    recorder: Recorder
    database: Database


@asynccontextmanager
async def stack(
    tmp_path: Path, database_url: str, redis_url: str, prefix: str, rate_per_ip: str
) -> AsyncIterator[Stack]:
    """svc_auth (real, in-process) + an ingest upstream + the edge in front of both."""
    image = DescriptorImage()
    ready = tmp_path / "auth.json"
    settings = Settings(
        service="auth",
        postgres_url=database_url,
        redis_url=redis_url,
        subject_root=prefix,
        stream_prefix=prefix.upper(),
        ready_file=ready,
        metrics_addr="",
        grace_period_s=1,
        extra={
            "MEDMESH_AUTH_KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "MEDMESH_AUTH_BOOTSTRAP_CLINIC": CLINIC,
            "MEDMESH_AUTH_BOOTSTRAP_ADMIN_EMAIL": ADMIN,
            "MEDMESH_AUTH_BOOTSTRAP_ADMIN_PASSWORD": PASSWORD,
            "MEDMESH_AUTH_ARGON2_MEMORY_KIB": "8192",
            "MEDMESH_AUTH_RATE_LIMIT_IP": rate_per_ip,
        },
    )
    stop = asyncio.Event()
    auth_task = asyncio.create_task(
        serve(settings, auth_setup, migrations=service_migrations("auth"), stop=stop)
    )
    async with AsyncExitStack() as exits:
        exits.push_async_callback(lambda: auth_task)
        exits.callback(stop.set)
        while not ready.exists():
            if auth_task.done():
                auth_task.result()
            await asyncio.sleep(0.02)
        auth_addr = json.loads(ready.read_text())["grpc"]
        jwks = GrpcJwksSource(auth_addr, image=image)
        exits.push_async_callback(jwks.close)
        recorder = Recorder()
        ingest = GrpcServer(
            image,
            {INGEST: ScriptedServicer(image, INGEST, recorder)},
            interceptors=[
                AuthInterceptor(
                    TokenVerifier(jwks, issuer="medmesh", audience="medmesh"),
                    {INGEST: role_rules(image, INGEST)},
                )
            ],
        )
        ingest_addr = await ingest.start()
        exits.push_async_callback(ingest.stop, 0)
        edge_settings = EdgeSettings(
            upstreams={"auth": auth_addr, "ingest": ingest_addr},
            authz_addr=auth_addr,
            metrics_addr="",
            grace_period_s=1,
        )
        url = await exits.enter_async_context(running_edge(edge_settings, image))
        database = await exits.enter_async_context(Database(database_url))
        yield Stack(url, recorder, database)


async def _login(client: httpx.AsyncClient, email: str) -> str:
    response = await client.post("/v1/auth:login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return response.json()["accessToken"]


async def test_sign_in_over_rest_then_call_a_service_with_the_token(
    tmp_path: Path, database_url: str, redis_url: str, name_prefix: str
) -> None:
    async with (
        stack(tmp_path, database_url, redis_url, name_prefix, "1000/60") as running,
        httpx.AsyncClient(base_url=running.url, timeout=20) as client,
    ):
        keys = (await client.get("/.well-known/jwks.json")).json()["keys"]
        assert keys
        assert keys[0]["kid"]
        token = await _login(client, ADMIN)
        refused = await client.get("/v1/studies/s1")
        assert refused.status_code == 401
        assert refused.json()["code"] == 16
        assert refused.headers["www-authenticate"].startswith("Bearer")
        response = await client.get("/v1/studies/s1", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200
        received = running.recorder.last("GetStudy")
        assert received.request.name == "studies/s1"
        assert received.metadata["x-medmesh-clinic"] == CLINIC
        assert received.metadata["x-medmesh-roles"] == "admin"
        assert received.metadata["x-medmesh-user"]


async def test_a_role_the_gateway_rules_exclude_is_refused_403_before_the_service(
    tmp_path: Path, database_url: str, redis_url: str, name_prefix: str
) -> None:
    async with (
        stack(tmp_path, database_url, redis_url, name_prefix, "1000/60") as running,
        httpx.AsyncClient(base_url=running.url, timeout=20) as client,
    ):
        viewer = "viewer@clinic-e2e.example"
        hashing = PasswordHashing(time_cost=1, memory_kib=8192)
        await ensure_account(
            running.database, hashing, BootstrapAccount(CLINIC, viewer, PASSWORD, ("viewer",))
        )
        token = await _login(client, viewer)
        response = await client.delete(
            "/v1/studies/s1", headers={"authorization": f"Bearer {token}"}
        )
        assert response.status_code == 403
        assert response.json()["code"] == 7
        assert running.recorder.calls == []


@pytest.mark.parametrize("protocol", ["rest", "grpc-web"])
async def test_past_the_per_address_limit_requests_get_429_with_retry_after(
    tmp_path: Path, database_url: str, redis_url: str, name_prefix: str, protocol: str
) -> None:
    async with (
        stack(tmp_path, database_url, redis_url, name_prefix, "3/60") as running,
        httpx.AsyncClient(base_url=running.url, timeout=20) as client,
    ):
        statuses = []
        for _ in range(4):
            if protocol == "rest":
                response = await client.get("/v1/studies")
                statuses.append(response.status_code)
            else:
                response = await client.post(
                    f"/{INGEST}/ListStudies",
                    content=b"\x00\x00\x00\x00\x00",
                    headers={"content-type": "application/grpc-web+proto"},
                )
                statuses.append(int(response.headers["grpc-status"]))
        limited = 429 if protocol == "rest" else 8
        assert statuses[-1] == limited
        assert limited not in statuses[:3]
        assert int(response.headers["retry-after"]) >= 1
