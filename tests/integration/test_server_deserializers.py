"""Per-RPC request deserializers (medmesh/server.py `request_deserializers`): a servicer may
parse a byte-heavy request itself; the handler still gets the contract's betterproto2 type,
the other RPCs keep the generic parser, and a name that is no RPC is refused at bind time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from support import serving
from support.tokens import TokenFactory

from gen.medmesh.ingest.v1 import (
    GetFileRequest,
    GetFileResponse,
    GetStudyRequest,
    GetStudyResponse,
    Study,
    StudyFile,
)
from medmesh.client import AsyncStub
from medmesh.contract import DescriptorImage
from medmesh.identity import ANY_ROLE, RoleRules
from medmesh.runtime import ServiceParts
from medmesh.server import bind_servicer
from medmesh.settings import Settings

INGEST = "medmesh.ingest.v1.IngestService"
RULES: RoleRules = {"GetStudy": ANY_ROLE, "GetFile": ANY_ROLE}
parsed: list[bytes] = []


def parse_get_study(data: bytes) -> GetStudyRequest:
    """GetStudy's own parser: records what it was given; a name of "refuse" fails to parse."""
    parsed.append(data)
    request = GetStudyRequest.FromString(data)
    if request.name == "studies/refuse":
        raise ValueError("not a request this parser accepts")
    return request


class OwnParser:
    """GetStudy through `parse_get_study`; GetFile through the generic parser."""

    request_deserializers: ClassVar = {"GetStudy": parse_get_study}

    def __init__(self) -> None:
        self.requests: list[object] = []

    async def get_study(self, request: GetStudyRequest, _context: Any) -> GetStudyResponse:
        self.requests.append(request)
        return GetStudyResponse(study=Study(name=request.name))

    async def get_file(self, request: GetFileRequest, _context: Any) -> GetFileResponse:
        self.requests.append(request)
        return GetFileResponse(file=StudyFile(name=request.name))


@pytest.fixture
async def served(
    tmp_path: Path, tokens: TokenFactory
) -> AsyncIterator[tuple[AsyncStub, OwnParser, Any]]:
    """OwnParser served by the bootstrap in this process, a stub and call metadata."""
    image = DescriptorImage()
    ready = tmp_path / "ready.json"
    settings = Settings(service="ingest", ready_file=ready, grace_period_s=1)
    servicer = OwnParser()

    async def setup(_settings: Settings, _stack: AsyncExitStack) -> ServiceParts:
        return ServiceParts(
            servicers={INGEST: servicer}, role_rules={INGEST: RULES}, verifier=tokens.verifier()
        )

    auth = tokens.metadata_for(user_id="u-1", clinic_id="clinic-a", roles=["viewer"])
    async with (
        serving.served(settings, setup, image=image) as addresses,
        grpc.aio.insecure_channel(addresses["grpc"]) as channel,
    ):
        yield AsyncStub(channel, INGEST, image), servicer, auth


async def test_a_declared_deserializer_parses_its_rpcs_requests_into_the_contract_type(
    served: tuple[AsyncStub, OwnParser, Any],
) -> None:
    stub, servicer, auth = served
    parsed.clear()
    request = GetStudyRequest(name="studies/s1")
    response = await stub.get_study(request, metadata=auth)
    assert response.study.name == "studies/s1"
    assert parsed == [bytes(request)]
    assert servicer.requests == [request]
    assert type(servicer.requests[0]) is GetStudyRequest


async def test_rpcs_without_one_keep_the_generic_parser(
    served: tuple[AsyncStub, OwnParser, Any],
) -> None:
    stub, servicer, auth = served
    parsed.clear()
    response = await stub.get_file(GetFileRequest(name="studies/s1/files/f1"), metadata=auth)
    assert response.file.name == "studies/s1/files/f1"
    assert parsed == []
    assert servicer.requests == [GetFileRequest(name="studies/s1/files/f1")]


async def test_a_request_the_deserializer_refuses_never_reaches_the_handler(
    served: tuple[AsyncStub, OwnParser, Any],
) -> None:
    stub, servicer, auth = served
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.get_study(GetStudyRequest(name="studies/refuse"), metadata=auth)
    # As with a message the generic parser cannot read: grpc answers UNKNOWN itself.
    assert failure.value.code() == grpc.StatusCode.UNKNOWN
    assert servicer.requests == []


def test_a_deserializer_for_an_rpc_the_service_lacks_is_refused_at_bind_time() -> None:
    class Misspelled(OwnParser):
        request_deserializers: ClassVar = {"GetStudies": parse_get_study}

    with pytest.raises(ValueError, match="GetStudies"):
        bind_servicer(DescriptorImage(), INGEST, Misspelled())
