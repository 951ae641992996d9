"""Envoy's ext_authz Check served by svc_auth: identity headers, 401, 403, 429 with Retry-After
per user and per IP, and rate-limit counters that expire in Redis."""

from __future__ import annotations

import asyncio

import pytest
from auth_harness import ADMIN_EMAIL, CLINIC_A, AuthUnderTest
from envoy_data_plane.envoy.service.auth.v3 import CheckRequest, CheckResponse
from redis.asyncio import Redis

LIMITS = {"MEDMESH_AUTH_RATE_LIMIT_USER": "5/2", "MEDMESH_AUTH_RATE_LIMIT_IP": "8/2"}


async def check(
    auth: AuthUnderTest,
    method: str,
    path: str,
    *,
    token: str | None = None,
    client_ip: str = "10.0.0.1",
    headers: dict[str, str] | None = None,
) -> CheckResponse:
    """Call Check the way Envoy does."""
    all_headers = dict(headers or {})
    if token:
        all_headers["authorization"] = f"Bearer {token}"
    request = CheckRequest.from_dict(
        {
            "attributes": {
                "source": {"address": {"socketAddress": {"address": client_ip, "portValue": 5}}},
                "request": {"http": {"method": method, "path": path, "headers": all_headers}},
            }
        }
    )
    call = auth.channel.unary_unary(
        "/envoy.service.auth.v3.Authorization/Check",
        request_serializer=bytes,
        response_deserializer=CheckResponse.FromString,
    )
    return await call(request)


def denial(response: CheckResponse) -> tuple[int, dict[str, str]]:
    assert response.ok_response is None
    assert response.denied_response is not None
    headers = {h.header.key: h.header.value for h in response.denied_response.headers}
    return response.denied_response.status.code.value, headers


def ok_headers(response: CheckResponse) -> dict[str, str]:
    assert response.status is not None
    assert response.status.code == 0
    assert response.ok_response is not None
    return {h.header.key: h.header.value for h in response.ok_response.headers}


async def test_an_allowed_request_gets_the_identity_headers(auth: AuthUnderTest) -> None:
    token, login = await auth.token(CLINIC_A, ("clinician", "technician"))
    for method, path in (
        ("GET", "/v1/users/me"),
        ("POST", "/medmesh.auth.v1.AuthService/GetMe"),  # gRPC and gRPC-Web
        ("POST", "/v1/studies?validate=1"),
        ("GET", f"/v1/studies/{login.user.user_id}:watch"),
    ):
        headers = ok_headers(await check(auth, method, path, token=token))
        assert headers == {
            "x-medmesh-user": login.user.user_id,
            "x-medmesh-clinic": CLINIC_A,
            "x-medmesh-roles": "clinician,technician",
        }, path


async def test_a_public_route_passes_without_a_token_and_strips_identity_headers(
    auth: AuthUnderTest,
) -> None:
    response = await check(
        auth, "POST", "/v1/auth:login", headers={"x-medmesh-user": "someone-else"}
    )
    assert response.status.code == 0
    assert set(response.ok_response.headers_to_remove) == {
        "x-medmesh-user",
        "x-medmesh-clinic",
        "x-medmesh-roles",
    }
    assert ok_headers(await check(auth, "GET", "/.well-known/jwks.json")) == {}


async def test_a_missing_token_is_401_with_a_bearer_challenge(auth: AuthUnderTest) -> None:
    status, headers = denial(await check(auth, "GET", "/v1/users/me"))
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/users"),  # ListUsers: admins
        ("POST", "/v1/signingKeys:rotate"),  # RotateSigningKey: admins
        ("POST", "/medmesh.auth.v1.AuthService/ListUsers"),
        ("POST", "/v1/studies"),  # CreateStudy: not viewers
        ("GET", "/v1/deadLetters"),
        ("GET", "/v1/no-such-route"),  # closed by default
    ],
)
async def test_a_role_the_route_does_not_allow_is_403(
    auth: AuthUnderTest, method: str, path: str
) -> None:
    token, _ = await auth.token(CLINIC_A, ("viewer",))
    status, _ = denial(await check(auth, method, path, token=token))
    assert status == 403
    admin = await auth.login(ADMIN_EMAIL)
    if path != "/v1/no-such-route":
        ok_headers(await check(auth, method, path, token=admin.access_token))


@pytest.mark.parametrize("auth_extra", [LIMITS])
async def test_a_burst_over_the_user_limit_is_429_with_retry_after_and_the_counter_expires(
    auth: AuthUnderTest,
) -> None:
    token, login = await auth.token(CLINIC_A, ("clinician",))
    for _ in range(5):  # the user's burst, from different addresses
        ok_headers(await check(auth, "GET", "/v1/users/me", token=token, client_ip="10.1.1.1"))
    status, headers = denial(
        await check(auth, "GET", "/v1/users/me", token=token, client_ip="10.1.1.2")
    )
    assert status == 429
    retry_after = int(headers["retry-after"])
    assert 1 <= retry_after <= 2

    redis = Redis.from_url(auth.settings.redis_url)
    key = f"{auth.settings.subject_root}:auth:rl:gw-user:{login.user.user_id}"
    try:
        ttl_ms = await redis.pttl(key)
        assert 0 < ttl_ms <= 2000
        await asyncio.sleep(retry_after)
        ok_headers(await check(auth, "GET", "/v1/users/me", token=token, client_ip="10.1.1.3"))
        await asyncio.sleep(2.1)  # a full period idle: the bucket is full and its key gone
        assert await redis.exists(key) == 0
    finally:
        await redis.aclose()
    for _ in range(5):
        ok_headers(await check(auth, "GET", "/v1/users/me", token=token, client_ip="10.1.1.4"))


@pytest.mark.parametrize("auth_extra", [LIMITS])
async def test_a_burst_over_the_ip_limit_is_429_even_for_anonymous_requests(
    auth: AuthUnderTest,
) -> None:
    for _ in range(8):
        response = await check(auth, "GET", "/.well-known/jwks.json", client_ip="10.2.2.2")
        assert response.status.code == 0
    status, headers = denial(
        await check(auth, "GET", "/.well-known/jwks.json", client_ip="10.2.2.2")
    )
    assert status == 429
    assert int(headers["retry-after"]) >= 1
    # Other addresses are not affected.
    assert (
        await check(auth, "GET", "/.well-known/jwks.json", client_ip="10.2.2.3")
    ).status.code == 0
