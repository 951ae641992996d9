"""Token refresh against real svc_auth issuing one-second access tokens:
callers never see an expired token, a refresh token is used once even by concurrent calls,
and a session that cannot be refreshed says "log in again" instead of looping."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest
from conftest import ADMIN_EMAIL, PASSWORD, Mesh

from gen.medmesh.auth.v1 import GetMeRequest
from medmesh.client import AsyncStub, MedmeshClient, NotLoggedIn, Tokens
from medmesh.contract import DescriptorImage

AUTH = "medmesh.auth.v1.AuthService"


@pytest.fixture
def auth_env() -> dict[str, str]:
    """Access tokens live one second; a second of leeway (the least svc_auth allows)."""
    return {"MEDMESH_AUTH_ACCESS_TTL_S": "1", "MEDMESH_AUTH_LEEWAY_S": "1"}


async def until_refused(mesh: Mesh, token: str) -> None:
    """Wait until svc_auth itself refuses `token` (it expired), proving the test's premise."""
    async with grpc.aio.insecure_channel(mesh.auth) as channel:
        stub = AsyncStub(channel, AUTH, DescriptorImage())
        for _ in range(200):
            try:
                await stub.get_me(GetMeRequest(), metadata=[("authorization", f"Bearer {token}")])
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    return
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("the access token never expired")


async def test_an_expired_access_token_is_refreshed_before_the_call_and_stored(
    mesh: Mesh,
) -> None:
    stored: list[Tokens] = []
    async with MedmeshClient(mesh.endpoints, on_tokens=stored.append) as client:
        await client.login(ADMIN_EMAIL, PASSWORD)
        first = client.tokens
        assert first is not None
        await until_refused(mesh, first.access_token)

        me = await client.get_me()

        assert me.email == ADMIN_EMAIL
        assert client.token_refreshes == 1
        assert len(stored) == 2
        assert stored[0].access_token == first.access_token
        assert stored[1].access_token != first.access_token
        assert stored[1].refresh_token != first.refresh_token  # rotated: the new one is kept


async def test_a_token_refused_before_its_recorded_expiry_is_refreshed_once_and_retried(
    mesh: Mesh,
) -> None:
    async with MedmeshClient(mesh.endpoints) as login:
        await login.login(ADMIN_EMAIL, PASSWORD)
        assert login.tokens is not None
        await until_refused(mesh, login.tokens.access_token)
        # A session resumed from storage whose recorded expiry is wrong (a clock that
        # jumped): the client believes the token valid, the server does not.
        believed_valid = dataclasses.replace(
            login.tokens, access_expires_at=login.tokens.access_expires_at + 3600
        )
    async with MedmeshClient(mesh.endpoints, tokens=believed_valid) as client:
        me = await client.get_me()
        assert me.email == ADMIN_EMAIL
        assert client.token_refreshes == 1


async def test_concurrent_calls_after_expiry_share_one_refresh(mesh: Mesh) -> None:
    async with MedmeshClient(mesh.endpoints) as client:
        await client.login(ADMIN_EMAIL, PASSWORD)
        assert client.tokens is not None
        await until_refused(mesh, client.tokens.access_token)

        users = await asyncio.gather(*(client.get_me() for _ in range(6)))

        assert {u.email for u in users} == {ADMIN_EMAIL}
        # Two refreshes with one refresh token would make svc_auth revoke the session.
        assert client.token_refreshes == 1


async def test_a_session_ended_elsewhere_asks_to_log_in_again(mesh: Mesh) -> None:
    async with MedmeshClient(mesh.endpoints) as client:
        await client.login(ADMIN_EMAIL, PASSWORD)
        assert client.tokens is not None
        async with MedmeshClient(mesh.endpoints, tokens=client.tokens) as same_session:
            await same_session.logout()
        await until_refused(mesh, client.tokens.access_token)

        with pytest.raises(NotLoggedIn, match="log in again"):
            await client.get_me()
        assert client.tokens is None
        with pytest.raises(NotLoggedIn):
            await client.get_me()
