"""svc_auth cannot be made to burn CPU on argon2 by strangers: every flow checks its rate
limits and its token before hashing, sign-in attempts are counted before the password check
(so a concurrent burst hashes at most the limit), limits are per client IP and per account,
and the hashing pool refuses work beyond its queue instead of growing without bound.

Client addresses come from `x-forwarded-for`, trusted from 127.0.0.1 as from a gateway.
argon2 work is counted by wrapping the service's hasher (it runs in this process).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from auth_harness import ADMIN_EMAIL, CLINIC_A, PASSWORD, AuthUnderTest
from cryptography.fernet import Fernet
from envoy_data_plane.envoy.service.auth.v3 import CheckRequest, CheckResponse
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gen.medmesh.auth.v1 import (
    AcceptInvitationRequest,
    LoginRequest,
    RegisterRequest,
    RequestPasswordResetRequest,
    ResetPasswordRequest,
    VerifyEmailRequest,
)
from medmesh.client import AsyncStub
from medmesh.contract import DescriptorImage
from medmesh.errors import ResourceExhausted
from svc_auth.passwords import PasswordHashing

TRUST_LOCAL = {"MEDMESH_AUTH_TRUSTED_PROXIES": "127.0.0.1/32"}
NEW_PASSWORD = "a brand new passphrase 42"


def from_ip(ip: str) -> tuple[tuple[str, str], ...]:
    return (("x-forwarded-for", ip),)


@pytest.fixture
def argon2_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every argon2 hash or verify the process runs from now on, by name."""
    calls: list[str] = []
    original_hash, original_verify = PasswordHashing.hash, PasswordHashing.verify

    async def counted_hash(self: PasswordHashing, password: str) -> str:
        calls.append("hash")
        return await original_hash(self, password)

    async def counted_verify(self: PasswordHashing, encoded: str | None, password: str) -> bool:
        calls.append("verify")
        return await original_verify(self, encoded, password)

    monkeypatch.setattr(PasswordHashing, "hash", counted_hash)
    monkeypatch.setattr(PasswordHashing, "verify", counted_verify)
    return calls


def retry_delay_s(error: grpc.aio.AioRpcError) -> float:
    """The RetryInfo delay of a RESOURCE_EXHAUSTED answer."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    status = rpc_status.from_call(error)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in status.details)
    return retry.retry_delay.ToNanoseconds() / 1e9


async def reset_token_for(auth: AuthUnderTest, address: str) -> str:
    await auth.stub.request_password_reset(RequestPasswordResetRequest(email=address))
    return await auth.mailbox.token_for(address)


# Each flow prepares what it needs, empties `calls`, then makes the call that must be refused.
Flow = Callable[[AuthUnderTest, list[str]], Awaitable[None]]


async def bad_reset_token(auth: AuthUnderTest, calls: list[str]) -> None:
    calls.clear()
    await auth.stub.reset_password(
        ResetPasswordRequest(token="not-a-token", new_password=NEW_PASSWORD)
    )


async def reset_to_a_password_holding_the_address(auth: AuthUnderTest, calls: list[str]) -> None:
    address = await auth.create_user(CLINIC_A, ("viewer",))
    token = await reset_token_for(auth, address)
    local = address.partition("@")[0]
    calls.clear()
    await auth.stub.reset_password(ResetPasswordRequest(token=token, new_password=f"{local}-xyz!"))


async def bad_invitation_token(auth: AuthUnderTest, calls: list[str]) -> None:
    calls.clear()
    await auth.stub.accept_invitation(
        AcceptInvitationRequest(token="not-a-token", password=NEW_PASSWORD)
    )


async def register_a_taken_address(auth: AuthUnderTest, calls: list[str]) -> None:
    calls.clear()
    await auth.stub.register(
        RegisterRequest(email=ADMIN_EMAIL, password=PASSWORD, display_name="X", clinic_id=CLINIC_A)
    )


async def bad_verification_token(auth: AuthUnderTest, calls: list[str]) -> None:
    calls.clear()
    await auth.stub.verify_email(VerifyEmailRequest(token="not-a-token"))


REFUSED_CHEAPLY: dict[str, tuple[Flow, grpc.StatusCode]] = {
    "reset with an unknown token": (bad_reset_token, grpc.StatusCode.FAILED_PRECONDITION),
    "reset to a password holding the address": (
        reset_to_a_password_holding_the_address,
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "accept an unknown invitation": (bad_invitation_token, grpc.StatusCode.FAILED_PRECONDITION),
    "register a taken address": (register_a_taken_address, grpc.StatusCode.ALREADY_EXISTS),
    "verify an unknown token": (bad_verification_token, grpc.StatusCode.FAILED_PRECONDITION),
}


@pytest.mark.parametrize("case", list(REFUSED_CHEAPLY))
async def test_a_refused_request_costs_no_argon2_work(
    auth: AuthUnderTest, argon2_calls: list[str], case: str
) -> None:
    flow, code = REFUSED_CHEAPLY[case]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await flow(auth, argon2_calls)
    assert refused.value.code() == code
    assert argon2_calls == []


@pytest.mark.parametrize("auth_extra", [{**TRUST_LOCAL, "MEDMESH_AUTH_TOKEN_LIMIT_IP": "3/60"}])
async def test_reset_attempts_are_limited_per_address_with_retry_info(
    auth: AuthUnderTest,
) -> None:
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await auth.stub.reset_password(
                ResetPasswordRequest(token=secrets.token_urlsafe(8), new_password=NEW_PASSWORD),
                metadata=from_ip("203.0.113.7"),
            )
        assert unknown.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as limited:
        await auth.stub.verify_email(VerifyEmailRequest(token="x"), metadata=from_ip("203.0.113.7"))
    assert 0 < retry_delay_s(limited.value) <= 20
    # Another address still resets its password.
    address = await auth.create_user(CLINIC_A, ("viewer",))
    token = await reset_token_for(auth, address)
    await auth.stub.reset_password(
        ResetPasswordRequest(token=token, new_password=NEW_PASSWORD),
        metadata=from_ip("203.0.113.8"),
    )
    assert (await auth.login(address, NEW_PASSWORD)).access_token


@pytest.mark.parametrize(
    "auth_extra", [{**TRUST_LOCAL, "MEDMESH_AUTH_TOKEN_LIMIT_ACCOUNT": "2/60"}]
)
async def test_reset_attempts_are_limited_per_account_whatever_the_address(
    auth: AuthUnderTest, argon2_calls: list[str]
) -> None:
    address = await auth.create_user(CLINIC_A, ("viewer",))
    token = await reset_token_for(auth, address)
    weak = address.partition("@")[0] + "-xyz!"  # refused only once the account is known
    argon2_calls.clear()
    for index in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await auth.stub.reset_password(
                ResetPasswordRequest(token=token, new_password=weak),
                metadata=from_ip(f"198.51.100.{index}"),
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as limited:
        await auth.stub.reset_password(
            ResetPasswordRequest(token=token, new_password=NEW_PASSWORD),
            metadata=from_ip("198.51.100.9"),
        )
    assert retry_delay_s(limited.value) > 0
    assert argon2_calls == []


@pytest.mark.parametrize(
    "auth_extra",
    [
        {
            **TRUST_LOCAL,
            "MEDMESH_AUTH_LOGIN_LIMIT_IP": "5/60",
            "MEDMESH_AUTH_LOGIN_LIMIT_ACCOUNT": "1000/60",
        }
    ],
)
async def test_a_concurrent_sign_in_burst_from_one_address_hashes_at_most_its_limit(
    auth: AuthUnderTest, argon2_calls: list[str]
) -> None:
    victim = await auth.create_user(CLINIC_A, ("clinician",))
    bystander = await auth.create_user(CLINIC_A, ("clinician",))
    argon2_calls.clear()

    async def attempt() -> grpc.aio.AioRpcError | None:
        try:
            await auth.stub.login(
                LoginRequest(email=victim, password="wrong password 123"),
                metadata=from_ip("192.0.2.66"),
            )
        except grpc.aio.AioRpcError as error:
            return error
        return None

    errors = await asyncio.gather(*(attempt() for _ in range(30)))
    codes = [error.code() if error else grpc.StatusCode.OK for error in errors]
    assert codes.count(grpc.StatusCode.UNAUTHENTICATED) == 5
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 25
    limited = [e for e in errors if e and e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert all(0 < retry_delay_s(error) <= 60 for error in limited)
    assert argon2_calls.count("verify") == 5
    # Another address signs in at once, and so does the victim's own, correct password
    # from elsewhere (the per-account limit is generous here).
    login = await auth.stub.login(
        LoginRequest(email=bystander, password=PASSWORD), metadata=from_ip("192.0.2.77")
    )
    assert login.access_token
    assert (
        await auth.stub.login(
            LoginRequest(email=victim, password=PASSWORD), metadata=from_ip("192.0.2.78")
        )
    ).access_token


@pytest.mark.parametrize("auth_extra", [{**TRUST_LOCAL, "MEDMESH_AUTH_LOGIN_LIMIT_IP": "3/60"}])
async def test_successful_sign_ins_do_not_use_up_the_address_limit(auth: AuthUnderTest) -> None:
    address = await auth.create_user(CLINIC_A, ("viewer",))
    for _ in range(6):  # twice the limit: each success gives its attempt back
        login = await auth.stub.login(
            LoginRequest(email=address, password=PASSWORD), metadata=from_ip("192.0.2.10")
        )
        assert login.access_token


async def test_the_hashing_pool_refuses_work_beyond_its_queue_at_once() -> None:
    hashing = PasswordHashing(time_cost=1, memory_kib=8192, max_concurrent=1, max_waiting=1)
    try:
        results: list[Any] = await asyncio.gather(
            *(hashing.hash(f"password number {i}") for i in range(5)), return_exceptions=True
        )
    finally:
        hashing.close()
    refused = [r for r in results if isinstance(r, ResourceExhausted)]
    assert len(refused) == 3
    assert all(r.retry_after_s for r in refused)
    assert sum(isinstance(r, str) and r.startswith("$argon2id$") for r in results) == 2


FLOOD = {
    **TRUST_LOCAL,
    "MEDMESH_AUTH_ARGON2_MEMORY_KIB": "65536",  # production cost: t=3, 64 MiB
    "MEDMESH_AUTH_LOGIN_LIMIT_IP": "1000/60",  # many addresses: only the pool holds them back
    "MEDMESH_AUTH_LOGIN_LIMIT_ACCOUNT": "1000/60",
    "MEDMESH_AUTH_RATE_LIMIT_IP": "100000/60",
    "MEDMESH_AUTH_RATE_LIMIT_USER": "100000/60",
}


@asynccontextmanager
async def auth_process(
    database_url: str, redis_url: str, prefix: str, tmp_path: Path, extra: dict[str, str]
) -> AsyncIterator[str]:
    """`python -m svc_auth` in its own process (its own event loop and GIL): its address."""
    ready = tmp_path / "auth-ready.json"
    env = {
        **os.environ,
        "MEDMESH_POSTGRES_URL": database_url,
        "MEDMESH_REDIS_URL": redis_url,
        "MEDMESH_SUBJECT_ROOT": prefix,
        "MEDMESH_READY_FILE": str(ready),
        "MEDMESH_METRICS_ADDR": "",
        "MEDMESH_LOG_LEVEL": "warning",
        "MEDMESH_AUTH_KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "MEDMESH_AUTH_BOOTSTRAP_CLINIC": CLINIC_A,
        "MEDMESH_AUTH_BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
        "MEDMESH_AUTH_BOOTSTRAP_ADMIN_PASSWORD": PASSWORD,
        **extra,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "svc_auth", env=env, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        while not ready.exists():
            assert process.returncode is None, "svc_auth exited"
            await asyncio.sleep(0.05)
        yield json.loads(ready.read_text())["grpc"]
    finally:
        process.terminate()
        await process.wait()


@pytest.mark.skipif(not os.environ.get("MEDMESH_MEASURE"), reason="set MEDMESH_MEASURE=1")
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({**FLOOD, "MEDMESH_AUTH_HASH_CONCURRENCY": "1"}, id="pool-1"),
        pytest.param(
            {**FLOOD, "MEDMESH_AUTH_HASH_CONCURRENCY": "6", "MEDMESH_AUTH_HASH_QUEUE": "1000"},
            id="pool-6-unbounded-queue",
        ),
    ],
)
async def test_measure_gateway_check_latency_during_a_sign_in_flood(
    database_url: str, redis_url: str, name_prefix: str, tmp_path: Path, extra: dict[str, str]
) -> None:
    """Check latency for a signed-in user while 120 wrong-password sign-ins from 120 addresses
    arrive at once, svc_auth in its own process (prints the figures; the edge answers 503
    past MEDMESH_EDGE_AUTHZ_TIMEOUT_S, 2 s)."""
    async with (
        auth_process(database_url, redis_url, name_prefix, tmp_path, extra) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        stub = AsyncStub(channel, "medmesh.auth.v1.AuthService", DescriptorImage())
        token = (await stub.login(LoginRequest(email=ADMIN_EMAIL, password=PASSWORD))).access_token
        check = channel.unary_unary(
            "/envoy.service.auth.v3.Authorization/Check",
            request_serializer=bytes,
            response_deserializer=CheckResponse.FromString,
        )
        request = CheckRequest.from_dict(
            {
                "attributes": {
                    "source": {"address": {"socketAddress": {"address": "10.0.0.9"}}},
                    "request": {
                        "http": {
                            "method": "GET",
                            "path": "/v1/users/me",
                            "headers": {"authorization": f"Bearer {token}"},
                        }
                    },
                }
            }
        )
        assert (await check(request)).ok_response is not None  # warm: keys cached

        async def sign_in(index: int) -> grpc.StatusCode:
            try:
                await stub.login(
                    LoginRequest(email=ADMIN_EMAIL, password="wrong password 123"),
                    metadata=from_ip(f"10.8.{index // 250}.{index % 250}"),
                    timeout=60,
                )
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        started = time.perf_counter()
        flood = asyncio.gather(*(sign_in(i) for i in range(120)))
        latencies = []
        while not flood.done():
            began = time.perf_counter()
            answer = await check(request, timeout=30)
            latencies.append(time.perf_counter() - began)
            assert answer.ok_response is not None
            await asyncio.sleep(0.02)
        codes = await flood
        flood_s = time.perf_counter() - started
    ms = sorted(latency * 1000 for latency in latencies)
    print(  # noqa: T201 - the measurement is the output
        f"\nchecks={len(ms)} p50={ms[len(ms) // 2]:.1f}ms p99={ms[int(len(ms) * 0.99)]:.1f}ms "
        f"max={ms[-1]:.1f}ms refused={codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)}/120 "
        f"flood={flood_s:.1f}s"
    )
