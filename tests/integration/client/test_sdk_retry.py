"""Retries: a real gRPC server (medmesh's runtime and interceptors) that answers Login with
a scripted series of failures, then OK; and real svc_auth throttling sign-ins."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import ADMIN_EMAIL, PASSWORD
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from support.serving import served

from gen.medmesh.auth.v1 import LoginRequest, LoginResponse
from gen.medmesh.common.v1 import StudyStatus
from gen.medmesh.ingest.v1 import WatchStudyRequest, WatchStudyResponse
from medmesh import errors
from medmesh.auth import StaticJwks, TokenVerifier
from medmesh.client import Endpoints, MedmeshClient, RetryPolicy, Tokens
from medmesh.identity import PUBLIC
from medmesh.runtime import ServiceParts
from medmesh.settings import Settings

AUTH = "medmesh.auth.v1.AuthService"


def unavailable(retry_after_s: float | None) -> status_pb2.Status:
    """UNAVAILABLE, with a RetryInfo detail when `retry_after_s` is given."""
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="restarting")
    if retry_after_s is not None:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(int(retry_after_s * 1e9))
        detail = any_pb2.Any()
        detail.Pack(info)
        status.details.append(detail)
    return status


class ScriptedAuth:
    """Login fails with the next scripted failure while there is one, then succeeds."""

    SERVICE = AUTH
    RPCS = ("Login",)

    def __init__(self, failures: list[Any]) -> None:
        self.failures = list(failures)
        self.calls: list[float] = []

    async def login(self, request: LoginRequest, context: Any) -> LoginResponse:
        """Record the call's time; fail as scripted (a domain error goes through the real
        error-mapping interceptor, a Status is sent as it is)."""
        self.calls.append(time.monotonic())
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, errors.DomainError):
                raise failure
            await context.abort_with_status(rpc_status.to_status(failure))
        return LoginResponse(access_token="access", refresh_token="refresh", expires_in=900)


@pytest.fixture
def scripted(tmp_path: Path) -> Any:
    """`async with scripted(servicer) as (address, servicer)`: a scripted servicer of
    `servicer.SERVICE`, served by medmesh's runtime in this process; its RPCs are public."""

    @asynccontextmanager
    async def start(servicer: Any) -> AsyncIterator[tuple[str, Any]]:
        async def setup(_settings: Settings, _stack: AsyncExitStack) -> ServiceParts:
            return ServiceParts(
                servicers={servicer.SERVICE: servicer},
                role_rules={servicer.SERVICE: dict.fromkeys(servicer.RPCS, PUBLIC)},
                verifier=TokenVerifier(
                    StaticJwks({"keys": []}), issuer="medmesh", audience="medmesh"
                ),
            )

        settings = Settings(
            service="auth", ready_file=tmp_path / "scripted.json", metrics_addr="", grace_period_s=1
        )
        async with served(settings, setup) as ready:
            yield ready["grpc"], servicer

    return start


POLICY = RetryPolicy(attempts=5, initial_backoff_s=0.05, max_backoff_s=0.2, max_retry_delay_s=5)


@pytest.mark.parametrize(
    ("failures", "calls", "min_gap_s", "outcome"),
    [
        pytest.param([unavailable(0.3)] * 3, 4, 0.3, "OK", id="UNAVAILABLE with RetryInfo"),
        pytest.param(
            [errors.ResourceExhausted("slow down", retry_after_s=0.3)] * 3,
            4,
            0.3,
            "OK",
            id="RESOURCE_EXHAUSTED with RetryInfo",
        ),
        pytest.param([unavailable(None)] * 2, 3, 0.025, "OK", id="UNAVAILABLE, backoff"),
        pytest.param(
            [errors.ResourceExhausted("file too large")],
            1,
            0,
            "RESOURCE_EXHAUSTED",
            id="RESOURCE_EXHAUSTED without RetryInfo is a hard limit",
        ),
        pytest.param(
            [unavailable(60)], 1, 0, "UNAVAILABLE", id="a RetryInfo above the maximum is not waited"
        ),
        pytest.param([unavailable(None)] * 9, 5, 0.025, "UNAVAILABLE", id="gives up after 5"),
    ],
)
async def test_retries_follow_the_status_and_the_servers_retry_info(
    scripted: Any, failures: list[Any], calls: int, min_gap_s: float, outcome: str
) -> None:
    async with scripted(ScriptedAuth(failures)) as (address, servicer):
        async with MedmeshClient(address, retry=POLICY) as client:
            if outcome == "OK":
                response = await client.login("someone@clinic.example", "pw")
                assert response.access_token == "access"
                assert client.tokens is not None
            else:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await client.login("someone@clinic.example", "pw")
                assert raised.value.code().name == outcome
        assert len(servicer.calls) == calls
        gaps = [b - a for a, b in zip(servicer.calls, servicer.calls[1:], strict=False)]
        assert all(gap >= min_gap_s for gap in gaps), gaps
        if min_gap_s >= 0.3:
            assert all(gap < 0.3 + 1.0 for gap in gaps), gaps  # the delay, not a long backoff


@pytest.fixture
def auth_env() -> dict[str, str]:
    """Two failed sign-ins per account per two seconds."""
    return {"MEDMESH_AUTH_LOGIN_LIMIT_ACCOUNT": "2/2"}


async def test_a_sign_in_throttled_by_svc_auth_waits_the_delay_it_sends_and_succeeds(
    auth_address: tuple[str, Settings],
) -> None:
    endpoints = Endpoints(by_area={"auth": auth_address[0]})
    async with MedmeshClient(endpoints, retry=RetryPolicy(attempts=1)) as impatient:
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await impatient.login(ADMIN_EMAIL, "wrong password")
            assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as throttled:
            await impatient.login(ADMIN_EMAIL, PASSWORD)
        assert throttled.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    async with MedmeshClient(endpoints) as client:
        started = time.monotonic()
        response = await client.login(ADMIN_EMAIL, PASSWORD)
        waited = time.monotonic() - started
    assert response.user.email == ADMIN_EMAIL
    assert 0.2 < waited < 5, waited


class ScriptedWatch:
    """WatchStudy: the first stream sends CREATED and breaks (UNAVAILABLE, as when svc_ingest
    restarts); the next one sends the then current state, REPORT_READY, and ends."""

    SERVICE = "medmesh.ingest.v1.IngestService"
    RPCS = ("WatchStudy",)

    def __init__(self) -> None:
        self.calls = 0

    async def watch_study(self, request: WatchStudyRequest, context: Any) -> Any:
        """See the class docstring."""
        self.calls += 1
        if self.calls == 1:
            yield WatchStudyResponse(study=request.name, status=StudyStatus.CREATED)
            await context.abort_with_status(rpc_status.to_status(unavailable(None)))
        yield WatchStudyResponse(study=request.name, status=StudyStatus.REPORT_READY)


async def test_a_watch_broken_by_unavailable_is_watched_again_from_the_current_state(
    scripted: Any,
) -> None:
    session = Tokens("access", "refresh", time.time() + 900, 0.0, 900)
    async with (
        scripted(ScriptedWatch()) as (address, servicer),
        MedmeshClient(address, tokens=session, retry=POLICY) as client,
    ):
        statuses = [event.status async for event in client.watch_study("s1")]
    assert statuses == [StudyStatus.CREATED, StudyStatus.REPORT_READY]
    assert servicer.calls == 2
