"""The service bootstrap over real sockets: reflection, health, status mapping with details,
metrics, deadline propagation, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status
from support.serving import served
from support.tokens import TokenFactory

from gen.medmesh.ingest.v1 import (
    DeleteStudyRequest,
    GetFileRequest,
    GetStudyRequest,
    GetStudyResponse,
    Study,
    WatchStudyRequest,
    WatchStudyResponse,
)
from medmesh import errors
from medmesh.client import AsyncStub
from medmesh.contract import DescriptorImage
from medmesh.identity import (
    ADMIN,
    ANY_ROLE,
    CLINICIAN,
    PUBLIC,
    TECHNICIAN,
    VIEWER,
    RoleRules,
    current_identity,
)
from medmesh.interceptors import remaining_time
from medmesh.runtime import ServiceParts
from medmesh.settings import Settings

INGEST = "medmesh.ingest.v1.IngestService"
REPO = Path(__file__).resolve().parents[2]


class ScriptedIngest:
    """GetStudy behaves according to the requested name; WatchStudy fails after one message."""

    def __init__(self) -> None:
        self.seen_remaining: list[float | None] = []

    async def get_study(self, request: GetStudyRequest, _context: Any) -> GetStudyResponse:
        self.seen_remaining.append(remaining_time())
        if request.name == "studies/bad":
            raise errors.InvalidArgument.for_field("name", "must look like studies/{study}")
        if request.name == "studies/missing":
            raise errors.NotFound("study not found")
        if request.name == "studies/crash":
            raise RuntimeError("secret internal detail")
        if request.name == "studies/busy":
            raise errors.ResourceExhausted("slow down", retry_after_s=2.5)
        caller = current_identity()
        return GetStudyResponse(study=Study(name=request.name, clinic_id=caller.clinic_id))

    async def watch_study(
        self, request: WatchStudyRequest, _context: Any
    ) -> AsyncIterator[WatchStudyResponse]:
        yield WatchStudyResponse(study=request.name)
        raise errors.DependencyUnavailable("nats", "connection lost")


@pytest.fixture(scope="module")
def image() -> DescriptorImage:
    """The contract's descriptor image, loaded once."""
    return DescriptorImage()


RULES: RoleRules = {
    "GetStudy": frozenset({CLINICIAN, VIEWER}),
    "WatchStudy": ANY_ROLE,
    "GetFile": ANY_ROLE,
    "ListStudies": PUBLIC,
}


@pytest.fixture
async def server(
    tmp_path: Path, image: DescriptorImage, tokens: TokenFactory
) -> AsyncIterator[dict[str, Any]]:
    """The bootstrap serving ScriptedIngest in this process on free ports."""
    ready = tmp_path / "ready.json"
    settings = Settings(service="ingest", ready_file=ready, grace_period_s=1)
    servicer = ScriptedIngest()

    async def setup(_settings: Settings, _stack: AsyncExitStack) -> ServiceParts:
        return ServiceParts(
            servicers={INGEST: servicer}, role_rules={INGEST: RULES}, verifier=tokens.verifier()
        )

    async with (
        served(settings, setup, image=image) as addresses,
        grpc.aio.insecure_channel(addresses["grpc"]) as channel,
    ):
        yield {"channel": channel, "servicer": servicer, **addresses}


@pytest.fixture
def stub(server: dict[str, Any], image: DescriptorImage) -> AsyncStub:
    """An async stub of IngestService built from the contract."""
    return AsyncStub(server["channel"], INGEST, image)


@pytest.fixture
def auth(tokens: TokenFactory) -> tuple[tuple[str, str], ...]:
    """Call metadata of a clinician of clinic-a."""
    return tokens.metadata_for(user_id="u-1", clinic_id="clinic-a", roles=[CLINICIAN])


async def test_a_successful_call_returns_the_typed_response_for_the_callers_clinic(
    stub: AsyncStub, auth: Any
) -> None:
    response = await stub.get_study(GetStudyRequest(name="studies/s1"), metadata=auth)
    assert response.study.name == "studies/s1"
    assert response.study.clinic_id == "clinic-a"


@pytest.mark.parametrize(
    ("roles", "with_token", "rpc", "code"),
    [
        ([CLINICIAN], False, "get_study", grpc.StatusCode.UNAUTHENTICATED),
        ([TECHNICIAN], True, "get_study", grpc.StatusCode.PERMISSION_DENIED),
        ([ADMIN], True, "delete_study", grpc.StatusCode.PERMISSION_DENIED),
        ([VIEWER], True, "get_study", grpc.StatusCode.OK),
    ],
)
async def test_the_role_rules_decide_who_may_call_each_rpc(
    stub: AsyncStub,
    tokens: TokenFactory,
    roles: list[str],
    with_token: bool,
    rpc: str,
    code: grpc.StatusCode,
) -> None:
    metadata = tokens.metadata_for(roles=roles) if with_token else ()
    request = (
        DeleteStudyRequest(name="studies/s1")
        if rpc == "delete_study"
        else GetStudyRequest(name="studies/s1")
    )
    call = getattr(stub, rpc)(request, metadata=metadata)
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call
    assert await call.code() == code


async def test_a_token_from_an_unknown_signer_is_unauthenticated(stub: AsyncStub) -> None:
    stranger = TokenFactory()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.get_study(GetStudyRequest(name="studies/s1"), metadata=stranger.metadata_for())
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_reflection_lists_the_service_and_health(server: dict[str, Any]) -> None:
    def reflect() -> tuple[list[str], list[str]]:
        with grpc.insecure_channel(server["grpc"]) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = list(database.get_services())
            file = database.FindFileContainingSymbol(INGEST)
            methods = [m.name for s in file.service for m in s.method]
            return services, methods

    services, methods = await asyncio.to_thread(reflect)
    assert INGEST in services
    assert "grpc.health.v1.Health" in services
    assert {"GetStudy", "UploadFile", "WatchStudy"} <= set(methods)


async def test_health_reports_serving_for_the_server_and_the_service(
    server: dict[str, Any],
) -> None:
    health = health_pb2_grpc.HealthStub(server["channel"])
    for service in ("", INGEST):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("name", "code", "detail"),
    [
        ("studies/bad", grpc.StatusCode.INVALID_ARGUMENT, "name: must look like studies/{study}"),
        ("studies/missing", grpc.StatusCode.NOT_FOUND, "study not found"),
        ("studies/busy", grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down"),
        ("studies/crash", grpc.StatusCode.INTERNAL, "internal error"),
    ],
)
async def test_a_domain_error_becomes_its_status_code_and_message(
    stub: AsyncStub, auth: Any, name: str, code: grpc.StatusCode, detail: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.get_study(GetStudyRequest(name=name), metadata=auth)
    assert failure.value.code() == code
    assert failure.value.details() == detail


async def test_invalid_input_carries_a_bad_request_field_violation(
    stub: AsyncStub, auth: Any
) -> None:
    call = stub.get_study(GetStudyRequest(name="studies/bad"), metadata=auth)
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    status = await rpc_status.aio.from_call(call)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("name", "must look like studies/{study}")
    ]


async def test_rate_limited_calls_carry_retry_info(stub: AsyncStub, auth: Any) -> None:
    call = stub.get_study(GetStudyRequest(name="studies/busy"), metadata=auth)
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    status = await rpc_status.aio.from_call(call)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 2500


async def test_an_error_in_the_middle_of_a_stream_becomes_unavailable(
    stub: AsyncStub, auth: Any
) -> None:
    received: list[str] = []

    async def watch() -> None:
        async for message in stub.watch_study(WatchStudyRequest(name="studies/s1"), metadata=auth):
            received.append(message.study)

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await watch()
    assert received == ["studies/s1"]
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failure.value.details() == "nats is unavailable: connection lost"


async def test_an_rpc_the_servicer_lacks_answers_unimplemented(stub: AsyncStub, auth: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.get_file(GetFileRequest(name="studies/s1/files/f1"), metadata=auth)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_the_callers_deadline_is_visible_to_the_handler(
    stub: AsyncStub, server: dict[str, Any], auth: Any
) -> None:
    await stub.get_study(GetStudyRequest(name="studies/s1"), timeout=5, metadata=auth)
    await stub.get_study(GetStudyRequest(name="studies/s1"), metadata=auth)
    with_deadline, without = server["servicer"].seen_remaining[-2:]
    assert with_deadline is not None
    assert 3 < with_deadline <= 5
    assert without is None


async def test_metrics_count_each_call_by_status_code(
    stub: AsyncStub, server: dict[str, Any], auth: Any
) -> None:
    def handled(code: str) -> float:
        url = f"http://{server['metrics']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        prefix = (
            f'grpc_server_handled_total{{grpc_code="{code}",grpc_method="GetStudy",'
            f'grpc_service="{INGEST}"}} '
        )
        line = next((x for x in text.splitlines() if x.startswith(prefix)), prefix + "0")
        return float(line.rsplit(" ", 1)[1])

    ok_before, missing_before = handled("OK"), handled("NOT_FOUND")
    await stub.get_study(GetStudyRequest(name="studies/s1"), metadata=auth)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.get_study(GetStudyRequest(name="studies/missing"), metadata=auth)
    assert handled("OK") == ok_before + 1
    assert handled("NOT_FOUND") == missing_before + 1


def test_a_request_in_flight_when_sigterm_arrives_completes(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    env = {**os.environ, "MEDMESH_READY_FILE": str(ready), "MEDMESH_GRACE_PERIOD_S": "5"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "integration" / "slow_server.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(ready, process)
        address = json.loads(ready.read_text())["grpc"]
        with grpc.insecure_channel(address) as channel:
            get_study = channel.unary_unary(
                f"/{INGEST}/GetStudy",
                request_serializer=bytes,
                response_deserializer=GetStudyResponse.FromString,
            )
            in_flight = get_study.future(GetStudyRequest(name="studies/slow"), timeout=10)
            time.sleep(0.3)  # the RPC sleeps 1.5 s; by now it is inside the handler
            process.send_signal(signal.SIGTERM)
            assert in_flight.result().study.name == "studies/slow"
        assert process.wait(timeout=10) == 0
        log = process.stdout.read().decode() if process.stdout else ""
        assert "grpc server draining" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


def _wait_for(ready: Path, process: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if ready.exists():
            return
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        time.sleep(0.05)
    raise AssertionError("server did not become ready")
