"""gRPC-Web at the embedded edge: binary and text modes, unary and server streaming, status
and trailers (with google.rpc details), and what it refuses."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from edge_harness import Recorder, grpc_web_body, parse_grpc_web
from google.rpc import error_details_pb2, status_pb2

from gen.medmesh.ingest.v1 import (
    GetStudyRequest,
    GetStudyResponse,
    Study,
    UploadFileRequest,
    WatchStudyRequest,
    WatchStudyResponse,
)
from gen.medmesh.report.v1 import DownloadReportRequest, DownloadReportResponse
from medmesh import errors

INGEST = "/medmesh.ingest.v1.IngestService"
BINARY = "application/grpc-web+proto"
TEXT = "application/grpc-web-text"


def _headers(auth: dict[str, str], content_type: str) -> dict[str, str]:
    return {**auth, "content-type": content_type, "x-grpc-web": "1"}


@pytest.mark.parametrize("content_type", ["application/grpc-web", BINARY, TEXT])
async def test_a_unary_call_round_trips_in_every_mode(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str], content_type: str
) -> None:
    text = content_type == TEXT
    recorder.scripts["GetStudy"] = lambda request: GetStudyResponse(
        study=Study(name=request.name, description="knee")
    )
    response = await http.post(
        f"{INGEST}/GetStudy",
        content=grpc_web_body(bytes(GetStudyRequest(name="studies/s1")), text=text),
        headers=_headers(auth, content_type),
    )
    assert response.status_code == 200
    expected_type = "application/grpc-web-text+proto" if text else BINARY
    assert response.headers["content-type"] == expected_type
    reply = parse_grpc_web(response, text=text)
    assert reply.code == 0
    [message] = reply.messages
    assert GetStudyResponse.FromString(message).study == Study(
        name="studies/s1", description="knee"
    )
    assert recorder.last("GetStudy").metadata["authorization"] == auth["authorization"]


@pytest.mark.parametrize("text", [False, True])
async def test_a_server_stream_arrives_as_one_frame_per_message_then_trailers(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str], text: bool
) -> None:
    async def watch(request: Any) -> AsyncIterator[WatchStudyResponse]:
        for reason in ("queued", "analysing", "done"):
            yield WatchStudyResponse(study=request.name, reason=reason)

    recorder.scripts["WatchStudy"] = watch
    response = await http.post(
        f"{INGEST}/WatchStudy",
        content=grpc_web_body(bytes(WatchStudyRequest(name="studies/s1")), text=text),
        headers=_headers(auth, TEXT if text else BINARY),
    )
    reply = parse_grpc_web(response, text=text)
    assert [WatchStudyResponse.FromString(m).reason for m in reply.messages] == [
        "queued",
        "analysing",
        "done",
    ]
    assert reply.code == 0


async def test_a_stream_without_an_http_binding_is_served_over_grpc_web(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    async def download(_request: Any) -> AsyncIterator[DownloadReportResponse]:
        yield DownloadReportResponse(chunk=b"%PDF-1.7 ")
        yield DownloadReportResponse(chunk=b"...%%EOF")

    recorder.scripts["DownloadReport"] = download
    response = await http.post(
        "/medmesh.report.v1.ReportService/DownloadReport",
        content=grpc_web_body(bytes(DownloadReportRequest(name="reports/r1"))),
        headers=_headers(auth, BINARY),
    )
    reply = parse_grpc_web(response)
    assert b"".join(DownloadReportResponse.FromString(m).chunk for m in reply.messages) == (
        b"%PDF-1.7 ...%%EOF"
    )


async def test_an_error_status_travels_in_the_trailer_frame_with_its_details(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    def bad(_request: Any) -> Any:
        raise errors.InvalidArgument.for_field("name", "must look like studies/{study} — 100%")

    recorder.scripts["GetStudy"] = bad
    response = await http.post(
        f"{INGEST}/GetStudy",
        content=grpc_web_body(bytes(GetStudyRequest(name="x"))),
        headers=_headers(auth, BINARY),
    )
    reply = parse_grpc_web(response)
    assert reply.messages == []
    assert reply.code == 3
    assert reply.message == "name: must look like studies/{study} — 100%"
    encoded = reply.trailers["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(base64.b64decode(encoded + "=" * (-len(encoded) % 4)))
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "name"


async def test_an_error_after_some_messages_still_ends_with_its_status(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    async def broken(request: Any) -> AsyncIterator[WatchStudyResponse]:
        yield WatchStudyResponse(study=request.name)
        raise errors.DependencyUnavailable("nats")

    recorder.scripts["WatchStudy"] = broken
    response = await http.post(
        f"{INGEST}/WatchStudy",
        content=grpc_web_body(bytes(WatchStudyRequest(name="studies/s1"))),
        headers=_headers(auth, BINARY),
    )
    reply = parse_grpc_web(response)
    assert len(reply.messages) == 1
    assert (reply.code, reply.message) == (14, "nats is unavailable")


async def test_a_client_streaming_rpc_is_refused_over_grpc_web(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    response = await http.post(
        f"{INGEST}/UploadFile",
        content=grpc_web_body(bytes(UploadFileRequest(chunk=b"\x89PNG"))),
        headers=_headers(auth, BINARY),
    )
    reply = parse_grpc_web(response)
    assert reply.code == 12
    assert "client-streaming" in reply.message
    assert recorder.calls == []


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/medmesh.ingest.v1.IngestService/Teleport", grpc_web_body(b""), 12),
        ("/grpc.health.v1.Health/Check", grpc_web_body(b""), 12),
        (f"{INGEST}/GetStudy", b"\x00\x00\x00\x00\x09abc", 3),
        (f"{INGEST}/GetStudy", b"\x01\x00\x00\x00\x00", 3),
        (f"{INGEST}/GetStudy", grpc_web_body(b"") * 2, 3),
    ],
)
async def test_what_the_edge_cannot_forward_is_answered_trailers_only(
    http: httpx.AsyncClient,
    recorder: Recorder,
    auth: dict[str, str],
    path: str,
    body: bytes,
    code: int,
) -> None:
    response = await http.post(path, content=body, headers=_headers(auth, BINARY))
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["grpc-status"]) == code
    assert recorder.calls == []


async def test_grpc_timeout_becomes_the_upstream_deadline(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    async def slow(_request: Any) -> GetStudyResponse:
        await asyncio.sleep(2)
        return GetStudyResponse()

    recorder.scripts["GetStudy"] = slow
    response = await http.post(
        f"{INGEST}/GetStudy",
        content=grpc_web_body(bytes(GetStudyRequest(name="studies/s1"))),
        headers={**_headers(auth, BINARY), "grpc-timeout": "200m"},
    )
    assert parse_grpc_web(response).code == 4
