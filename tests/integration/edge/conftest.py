"""Fixtures for the gateway tests: real grpc.aio servers for the contract's services (scripted
servicers that record what reached them), a real ext_authz peer speaking Envoy's Check
protocol, and the embedded edge in front of them (helpers in edge_harness.py).

The black-box suite (test_gateway_contract.py) talks only to `gateway_url`: the embedded
edge, or whatever `MEDMESH_GATEWAY_URL` names (Envoy in front of a real stack).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import pytest
from edge_harness import (
    ALLOWED_ORIGIN,
    UPSTREAM_SERVICES,
    AuthzPeer,
    Recorder,
    ScriptedServicer,
    jwks_response,
    role_rules,
    running_edge,
)
from support.tokens import TokenFactory

from medmesh.auth import AuthInterceptor
from medmesh.contract import DescriptorImage
from medmesh.edge import EdgeSettings
from medmesh.server import GrpcServer


@pytest.fixture(scope="session")
def image() -> DescriptorImage:
    """The contract's descriptor image."""
    return DescriptorImage()


@pytest.fixture(scope="module")
def recorder(tokens: TokenFactory) -> Recorder:
    """Calls that reached the upstreams (cleared for each test by `fresh`)."""
    return Recorder(defaults={"GetJwks": lambda _: jwks_response(tokens)})


@pytest.fixture(scope="module")
async def upstreams(
    image: DescriptorImage, recorder: Recorder, tokens: TokenFactory
) -> AsyncIterator[dict[str, str]]:
    """One real gRPC server per service process (auth, ingest, infer, report), verifying
    tokens like the real services: name → host:port."""
    servers: dict[str, GrpcServer] = {}
    for name, services in UPSTREAM_SERVICES.items():
        servicers = {s: ScriptedServicer(image, s, recorder) for s in services}
        rules = {s: role_rules(image, s) for s in services}
        servers[name] = GrpcServer(
            image, servicers, interceptors=[AuthInterceptor(tokens.verifier(), rules)]
        )
    addresses = {name: await server.start() for name, server in servers.items()}
    yield addresses
    for server in servers.values():
        await server.stop(0)


@pytest.fixture(scope="module")
async def authz(tokens: TokenFactory) -> AsyncIterator[AuthzPeer]:
    """The ext_authz peer the embedded edge asks."""
    peer = AuthzPeer(tokens)
    await peer.server.start()
    yield peer
    await peer.server.stop(0)


@pytest.fixture(scope="module")
async def edge(
    image: DescriptorImage, upstreams: dict[str, str], authz: AuthzPeer
) -> AsyncIterator[str]:
    """The embedded edge in this process, on a free port: its base URL."""
    settings = EdgeSettings(
        upstreams=upstreams,
        authz_addr=authz.address,
        cors_origins=(ALLOWED_ORIGIN,),
        metrics_addr="",
        grace_period_s=1,
    )
    async with running_edge(settings, image) as url:
        yield url


@pytest.fixture(autouse=True)
def fresh(request: pytest.FixtureRequest) -> None:
    """Each test starts with no recorded calls, no scripts and no imposed authz answers."""
    if "recorder" in request.fixturenames:
        recorder = request.getfixturevalue("recorder")
        recorder.calls.clear()
        recorder.scripts.clear()
    if "authz" in request.fixturenames:
        peer = request.getfixturevalue("authz")
        peer.requests.clear()
        peer.answers.clear()


@pytest.fixture
def gateway_url(request: pytest.FixtureRequest) -> str:
    """MEDMESH_GATEWAY_URL when set (another gateway, e.g. Envoy), else the embedded edge
    (started only when needed, so a run against another gateway starts nothing here)."""
    configured = os.environ.get("MEDMESH_GATEWAY_URL", "")
    if configured:
        return configured.rstrip("/")
    return request.getfixturevalue("edge")


@pytest.fixture
async def http(edge: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the embedded edge."""
    async with httpx.AsyncClient(base_url=edge, timeout=10) as client:
        yield client


@pytest.fixture
async def gateway(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the gateway under test (embedded edge or MEDMESH_GATEWAY_URL)."""
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as client:
        yield client


@pytest.fixture
def auth(tokens: TokenFactory) -> dict[str, str]:
    """Headers of a clinician of clinic-a."""
    token = tokens.mint(user_id="u-1", clinic_id="clinic-a", roles=["clinician"])
    return {"authorization": f"Bearer {token}"}
