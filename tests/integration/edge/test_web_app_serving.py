"""The edge serves the browser app (web/dist) like Envoy's static route: index.html for every
screen's address, hashed assets, strict security headers, and never before the API's routes
or after ext_authz (the app's files are public; its calls are authorized like any other)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from edge_harness import AuthzPeer, running_edge

from medmesh.contract import DescriptorImage
from medmesh.edge import EdgeSettings

OBJECT_STORE = "http://127.0.0.1:9555"
INDEX = b'<!doctype html><script type="module" src="/assets/app-1a2b.js"></script>'
SCRIPT = b"console.info('app');"


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    """A built app: index.html and one hashed asset."""
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_bytes(INDEX)
    (tmp_path / "assets" / "app-1a2b.js").write_bytes(SCRIPT)
    return tmp_path


async def _client(
    settings: EdgeSettings, image: DescriptorImage
) -> AsyncIterator[httpx.AsyncClient]:
    async with running_edge(settings, image) as url, httpx.AsyncClient(base_url=url) as client:
        yield client


@pytest.fixture
async def app_edge(
    dist: Path, image: DescriptorImage, upstreams: dict[str, str], authz: AuthzPeer
) -> AsyncIterator[httpx.AsyncClient]:
    """The embedded edge serving `dist`, with an object store the CSP must allow."""
    settings = EdgeSettings(
        upstreams=upstreams,
        authz_addr=authz.address,
        metrics_addr="",
        grace_period_s=1,
        web_dir=dist,
        object_origins=(OBJECT_STORE,),
    )
    async for client in _client(settings, image):
        yield client


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/sign-in",
        "/verify-email",
        "/reset-password",
        "/accept-invitation",
        "/studies",
        "/studies/new",
        "/studies/0b7c6a56-7f5e-4d55-a4f3-0d7f5b6ad5a1",
        "/reports/r-1",
        "/admin/users",
    ],
)
async def test_every_screen_address_gets_index_html_without_asking_ext_authz(
    app_edge: httpx.AsyncClient, authz: AuthzPeer, path: str
) -> None:
    response = await app_edge.get(path)
    assert response.status_code == 200
    assert response.content == INDEX
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert authz.requests == []


async def test_the_app_carries_a_strict_content_security_policy_and_security_headers(
    app_edge: httpx.AsyncClient,
) -> None:
    headers = (await app_edge.get("/studies")).headers
    policy = dict(d.split(" ", 1) for d in headers["content-security-policy"].split("; "))
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["connect-src"] == f"'self' {OBJECT_STORE}"
    assert policy["img-src"] == f"'self' blob: data: {OBJECT_STORE}"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["object-src"] == "'none'"
    assert "unsafe" not in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"


async def test_hashed_assets_are_cached_for_a_year_and_a_missing_one_is_404(
    app_edge: httpx.AsyncClient,
) -> None:
    asset = await app_edge.get("/assets/app-1a2b.js")
    assert asset.status_code == 200
    assert asset.content == SCRIPT
    assert asset.headers["content-type"] == "text/javascript; charset=utf-8"
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    head = await app_edge.head("/assets/app-1a2b.js")
    assert head.status_code == 200
    assert head.content == b""
    missing = await app_edge.get("/assets/app-ffff.js")
    assert missing.status_code == 404
    assert missing.content != INDEX


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/studies", 401),
        ("GET", "/.well-known/jwks.json", 200),
        ("POST", "/studies", 401),
        ("GET", "/healthz", 200),
    ],
)
async def test_api_addresses_and_other_methods_stay_the_apis(
    app_edge: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await app_edge.request(method, path)
    assert response.status_code == status
    assert response.content != INDEX


async def test_an_edge_without_a_built_app_says_how_to_build_it(
    tmp_path: Path, image: DescriptorImage, upstreams: dict[str, str], authz: AuthzPeer
) -> None:
    settings = EdgeSettings(
        upstreams=upstreams,
        authz_addr=authz.address,
        metrics_addr="",
        grace_period_s=1,
        web_dir=tmp_path / "missing",
    )
    async for client in _client(settings, image):
        response = await client.get("/sign-in")
        assert response.status_code == 503
        assert b"npm ci && npm run build" in response.content
