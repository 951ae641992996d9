"""REST transcoding at the embedded edge: every google.api.http binding of the contract routes
to its RPC with the right typed request; responses and errors come back as proto-JSON."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from edge_harness import AbortWith, Recorder

from gen.medmesh.common.v1 import StudyStatus
from gen.medmesh.ingest.v1 import (
    GetStudyResponse,
    Study,
    StudyFile,
    WatchStudyResponse,
)
from medmesh import errors
from medmesh.contract import DescriptorImage
from medmesh.edge.routes import RouteTable

# (HTTP method, URL, JSON body or None, RPC, fields the upstream must have received).
ROUTES: list[tuple[str, str, dict[str, Any] | None, str, dict[str, Any]]] = [
    ("POST", "/v1/users:register", {"email": "a@b.c"}, "Register", {"email": "a@b.c"}),
    ("POST", "/v1/users:verifyEmail", {"token": "t"}, "VerifyEmail", {"token": "t"}),
    ("POST", "/v1/auth:login", {"email": "a@b.c"}, "Login", {"email": "a@b.c"}),
    ("POST", "/v1/auth:refresh", {"refreshToken": "r"}, "RefreshToken", {"refresh_token": "r"}),
    ("POST", "/v1/auth:logout", {"refresh_token": "r"}, "Logout", {"refresh_token": "r"}),
    ("POST", "/v1/auth:requestPasswordReset", {"email": "x@y.z"}, "RequestPasswordReset", {}),
    ("POST", "/v1/auth:resetPassword", {"newPassword": "p"}, "ResetPassword", {}),
    ("GET", "/v1/users?pageSize=3", None, "ListUsers", {"page_size": 3}),
    ("GET", "/.well-known/jwks.json", None, "GetJwks", {}),
    ("POST", "/v1/signingKeys:rotate", {}, "RotateSigningKey", {}),
    ("GET", "/v1/deadLetters?subject=s", None, "ListDeadLetters", {"subject": "s"}),
    ("GET", "/v1/models?page_token=t", None, "ListModels", {"page_token": "t"}),
    ("POST", "/v1/studies", {"patientRef": "p-1"}, "CreateStudy", {"patient_ref": "p-1"}),
    ("GET", "/v1/studies?patient_ref=p-2", None, "ListStudies", {"patient_ref": "p-2"}),
    ("POST", "/v1/reports:generate", {"study": "studies/s1"}, "GenerateReport", {}),
    ("GET", "/v1/reports?study=studies/s1", None, "ListReports", {"study": "studies/s1"}),
    ("GET", "/v1/users/me", None, "GetMe", {}),
    ("POST", "/v1/users/me:changePassword", {}, "ChangePassword", {}),
    ("POST", "/v1/users/u1:setRoles", {}, "SetUserRoles", {"name": "users/u1"}),
    ("POST", "/v1/users/u1:disable", {}, "DisableUser", {"name": "users/u1"}),
    ("POST", "/v1/users:invite", {"email": "a@b.c"}, "InviteUser", {"email": "a@b.c"}),
    ("POST", "/v1/users:acceptInvitation", {"token": "t"}, "AcceptInvitation", {"token": "t"}),
    ("POST", "/v1/users/u1:approve", {}, "ApproveUser", {"name": "users/u1"}),
    ("POST", "/v1/deadLetters/d1:replay", {}, "ReplayDeadLetter", {"name": "deadLetters/d1"}),
    ("GET", "/v1/models/resnet", None, "GetModel", {"name": "models/resnet"}),
    ("POST", "/v1/models/m:setTrafficSplit", {}, "SetTrafficSplit", {"name": "models/m"}),
    ("POST", "/v1/models/m:promote", {"version": "7"}, "PromoteModelVersion", {"version": 7}),
    ("POST", "/v1/models/m:rollback", {}, "RollbackModel", {"name": "models/m"}),
    ("GET", "/v1/studies/s1", None, "GetStudy", {"name": "studies/s1"}),
    ("DELETE", "/v1/studies/s1", None, "DeleteStudy", {"name": "studies/s1"}),
    ("GET", "/v1/studies/s1:watch", None, "WatchStudy", {"name": "studies/s1"}),
    ("GET", "/v1/reports/r1", None, "GetReport", {"name": "reports/r1"}),
    ("GET", "/v1/reports/r1:downloadUrl", None, "GetReportDownloadUrl", {"name": "reports/r1"}),
    ("POST", "/v1/reports/r1:deliver", {}, "DeliverReport", {"name": "reports/r1"}),
    ("POST", "/v1/reports/r1:redeliver", {}, "RedeliverReport", {"name": "reports/r1"}),
    ("GET", "/v1/studies/s1/results", None, "ListResults", {"parent": "studies/s1"}),
    ("POST", "/v1/models/m/versions", {"version": 2}, "RegisterModelVersion", {"version": 2}),
    ("POST", "/v1/studies/s1/files:createTextNote", {}, "CreateTextNote", {"parent": "studies/s1"}),
    ("POST", "/v1/studies/s1/files:createUploadUrl", {}, "CreateUploadUrl", {}),
    ("PUT", "/v1/clinics/c1/deliveryTarget", {}, "SetDeliveryTarget", {}),
    ("GET", "/v1/clinics/c1/deliveryTarget", None, "GetDeliveryTarget", {}),
    ("GET", "/v1/studies/s1/results/r1", None, "GetResult", {"name": "studies/s1/results/r1"}),
    ("POST", "/v1/studies/s1/files/f1:completeUpload", {}, "CompleteUpload", {}),
    ("GET", "/v1/studies/s1/files/f1", None, "GetFile", {"name": "studies/s1/files/f1"}),
    (
        "GET",
        "/v1/studies/s1/auditEvents?pageSize=5",
        None,
        "ListStudyAuditEvents",
        {"page_size": 5},
    ),
    (
        "GET",
        "/v1/studies/s1/files/f1:downloadUrl",
        None,
        "GetFileDownloadUrl",
        {"name": "studies/s1/files/f1"},
    ),
    (
        "GET",
        "/v1/studies/s1/results/r1:imageUrl",
        None,
        "GetResultImageUrl",
        {"name": "studies/s1/results/r1"},
    ),
]


def test_the_route_table_covers_every_http_binding_of_the_contract(
    image: DescriptorImage,
) -> None:
    bound = {route.rpc.method.name for route in RouteTable(image).rest}
    assert bound == {row[3] for row in ROUTES}
    assert all(not r.rpc.method.client_streaming for r in RouteTable(image).rest)


@pytest.mark.parametrize(("verb", "url", "body", "rpc", "fields"), ROUTES)
async def test_every_http_binding_reaches_its_rpc_with_the_bound_fields(
    http: httpx.AsyncClient,
    recorder: Recorder,
    auth: dict[str, str],
    verb: str,
    url: str,
    body: dict[str, Any] | None,
    rpc: str,
    fields: dict[str, Any],
) -> None:
    if rpc == "WatchStudy":

        async def one_event(request: Any) -> AsyncIterator[WatchStudyResponse]:
            yield WatchStudyResponse(study=request.name)

        recorder.scripts[rpc] = one_event
    response = await http.request(verb, url, json=body, headers=auth)
    assert response.status_code == 200, response.text
    received = recorder.last(rpc).request
    for name, value in fields.items():
        assert getattr(received, name) == value


async def test_path_variables_and_query_parameters_fill_the_typed_request(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    response = await http.get(
        "/v1/studies?pageSize=25&page_token=abc&patientRef=p%2B1&status=STUDY_STATUS_FAILED",
        headers=auth,
    )
    assert response.status_code == 200
    request = recorder.last("ListStudies").request
    assert (request.page_size, request.page_token, request.patient_ref) == (25, "abc", "p+1")
    assert request.status == StudyStatus.FAILED


async def test_a_path_variable_and_a_body_build_one_request(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    response = await http.post(
        "/v1/studies/s-9/files:createTextNote",
        json={"text": "chest pain since Monday", "fileName": "note.txt"},
        headers=auth,
    )
    assert response.status_code == 200
    request = recorder.last("CreateTextNote").request
    assert (request.parent, request.text, request.file_name) == (
        "studies/s-9",
        "chest pain since Monday",
        "note.txt",
    )


async def test_a_nested_path_variable_lands_inside_the_body_field(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    response = await http.put(
        "/v1/clinics/c-7/deliveryTarget",
        json={"fhirBaseUrl": "https://mis.test/fhir", "enabled": True, "notifyEmails": ["a@b.c"]},
        headers=auth,
    )
    assert response.status_code == 200
    target = recorder.last("SetDeliveryTarget").request.delivery_target
    assert target.name == "clinics/c-7/deliveryTarget"
    assert (target.fhir_base_url, target.enabled, target.notify_emails) == (
        "https://mis.test/fhir",
        True,
        ["a@b.c"],
    )


async def test_an_encoded_slash_stays_encoded_in_a_multi_segment_variable(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    response = await http.get("/v1/studies/a%2Fb%20c", headers=auth)
    assert response.status_code == 200
    assert recorder.last("GetStudy").request.name == "studies/a%2Fb c"


async def test_the_response_is_proto_json(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    created = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
    recorder.scripts["GetStudy"] = lambda request: GetStudyResponse(
        study=Study(
            name=request.name,
            status=StudyStatus.RESULT_READY,
            create_time=created,
            files=[StudyFile(file_name="x.png", size_bytes=5_000_000_000)],
        )
    )
    response = await http.get("/v1/studies/s1", headers=auth)
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "study": {
            "name": "studies/s1",
            "status": "STUDY_STATUS_RESULT_READY",
            "createTime": "2026-03-04T05:06:07Z",
            "files": [{"fileName": "x.png", "sizeBytes": "5000000000"}],
        }
    }


@pytest.mark.parametrize(
    ("verb", "url", "body", "field"),
    [
        ("GET", "/v1/studies?pageSize=lots", None, "pageSize"),
        ("GET", "/v1/studies?status=STUDY_STATUS_SHINY", None, "status"),
        ("GET", "/v1/studies?colour=red", None, "colour"),
        ("GET", "/v1/studies/s1/results?parent=studies/s2", None, "parent"),
        ("POST", "/v1/studies?patientRef=p", {}, "patientRef"),
        ("POST", "/v1/studies", {"patientRef": "p", "weight": 3}, "weight"),
        (
            "PUT",
            "/v1/clinics/c/deliveryTarget",
            {"enabled": True, "colour": 1},
            "delivery_target.colour",
        ),
    ],
)
async def test_bad_input_is_400_with_a_field_violation(
    http: httpx.AsyncClient,
    recorder: Recorder,
    auth: dict[str, str],
    verb: str,
    url: str,
    body: Any,
    field: str,
) -> None:
    response = await http.request(verb, url, json=body, headers=auth)
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == 3
    [details] = error["details"]
    assert details["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert [v["field"] for v in details["fieldViolations"]] == [field]
    assert recorder.calls == []


async def test_a_body_that_is_not_json_is_400(
    http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await http.post(
        "/v1/studies", content=b"{not json", headers={**auth, "content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["message"].startswith("the request body is not JSON")


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.InvalidArgument.for_field("name", "is malformed"), 400, 3),
        (errors.NotFound("study not found"), 404, 5),
        (errors.AlreadyExists("study exists"), 409, 6),
        (errors.PermissionDenied("not yours"), 403, 7),
        (errors.ResourceExhausted("slow down", retry_after_s=2.2), 429, 8),
        (errors.FailedPrecondition("study deleted"), 400, 9),
        (errors.DependencyUnavailable("postgres"), 503, 14),
        (errors.Unauthenticated("token expired"), 401, 16),
        (RuntimeError("secret detail"), 500, 13),
    ],
)
async def test_a_grpc_status_becomes_its_http_status_and_a_status_body(
    http: httpx.AsyncClient,
    recorder: Recorder,
    auth: dict[str, str],
    error: Exception,
    status: int,
    code: int,
) -> None:
    def fail(_request: Any) -> Any:
        raise error

    recorder.scripts["GetStudy"] = fail
    response = await http.get("/v1/studies/s1", headers=auth)
    assert response.status_code == status
    body = response.json()
    assert body["code"] == code
    assert body["message"] == (
        "internal error" if code == 13 else getattr(error, "message", str(error))
    )
    if code == 3:
        [details] = body["details"]
        assert details["fieldViolations"] == [{"field": "name", "description": "is malformed"}]
    if code == 8:
        assert response.headers["retry-after"] == "3"
        assert body["details"][0]["retryDelay"] == "2.200s"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.CANCELLED, 499),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.ABORTED, 409),
        (grpc.StatusCode.OUT_OF_RANGE, 400),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.DATA_LOSS, 500),
    ],
)
async def test_the_other_grpc_codes_map_to_their_standard_http_status(
    http: httpx.AsyncClient,
    recorder: Recorder,
    auth: dict[str, str],
    code: grpc.StatusCode,
    status: int,
) -> None:
    def abort(_request: Any) -> Any:
        raise AbortWith(code, f"ended with {code.name}")

    recorder.scripts["GetStudy"] = abort
    response = await http.get("/v1/studies/s1", headers=auth)
    assert response.status_code == status
    assert response.json() == {
        "code": code.value[0],
        "message": f"ended with {code.name}",
        "details": [],
    }


async def test_a_path_no_binding_matches_is_404_with_a_status_body(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    response = await http.get("/v1/nothing/here", headers=auth)
    assert response.status_code == 404
    assert response.json()["code"] == 5
    wrong_method = await http.patch("/v1/studies/s1", headers=auth)
    assert wrong_method.status_code == 404
    assert recorder.calls == []


async def test_a_server_stream_is_newline_delimited_json_flushed_per_message(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    gate = asyncio.Event()

    async def watch(request: Any) -> AsyncIterator[WatchStudyResponse]:
        yield WatchStudyResponse(study=request.name, status=StudyStatus.QUEUED)
        await gate.wait()
        yield WatchStudyResponse(study=request.name, status=StudyStatus.ANALYSING)

    recorder.scripts["WatchStudy"] = watch
    async with http.stream("GET", "/v1/studies/s1:watch", headers=auth) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = response.aiter_lines()
        first = json.loads(await anext(lines))
        assert first == {"study": "studies/s1", "status": "STUDY_STATUS_QUEUED"}
        gate.set()  # the second event exists only after the first line was read
        rest = [json.loads(line) async for line in lines if line]
    assert rest == [{"study": "studies/s1", "status": "STUDY_STATUS_ANALYSING"}]


async def test_an_error_before_the_first_streamed_message_is_a_plain_http_error(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    async def missing(_request: Any) -> AsyncIterator[WatchStudyResponse]:
        raise errors.NotFound("study not found")
        yield  # pragma: no cover

    recorder.scripts["WatchStudy"] = missing
    response = await http.get("/v1/studies/s404:watch", headers=auth)
    assert response.status_code == 404
    assert response.json()["message"] == "study not found"


async def test_an_error_in_the_middle_of_a_stream_ends_it_with_an_error_line(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    async def broken(request: Any) -> AsyncIterator[WatchStudyResponse]:
        yield WatchStudyResponse(study=request.name)
        raise errors.DependencyUnavailable("nats", "connection lost")

    recorder.scripts["WatchStudy"] = broken
    response = await http.get("/v1/studies/s1:watch", headers=auth)
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[0] == {"study": "studies/s1"}
    assert lines[1]["error"]["code"] == 14
    assert lines[1]["error"]["message"] == "nats is unavailable: connection lost"


async def test_a_client_leaving_a_stream_cancels_the_upstream_call(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    ended = asyncio.Event()

    async def endless(request: Any) -> AsyncIterator[WatchStudyResponse]:
        try:
            while True:
                yield WatchStudyResponse(study=request.name)
                await asyncio.sleep(0.05)
        finally:
            ended.set()

    recorder.scripts["WatchStudy"] = endless
    async with http.stream("GET", "/v1/studies/s1:watch", headers=auth) as response:
        await anext(response.aiter_lines())
    await asyncio.wait_for(ended.wait(), timeout=5)


async def test_the_token_and_the_authorized_identity_travel_upstream_and_spoofing_does_not(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    spoofed = {"x-medmesh-user": "admin", "x-medmesh-roles": "admin", "x-request-id": "req-42"}
    response = await http.get("/v1/studies/s1", headers={**auth, **spoofed})
    assert response.headers["x-request-id"] == "req-42"
    metadata = recorder.last("GetStudy").metadata
    assert metadata["authorization"] == auth["authorization"]
    assert metadata["x-medmesh-user"] == "u-1"
    assert metadata["x-medmesh-clinic"] == "clinic-a"
    assert metadata["x-medmesh-roles"] == "clinician"
    assert metadata["x-request-id"] == "req-42"
    assert metadata["x-forwarded-for"] == "127.0.0.1"


async def test_an_oversized_body_is_413_and_never_forwarded(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    huge = {"text": "x" * (4 * 1024 * 1024 + 10)}
    response = await http.post("/v1/studies/s1/files:createTextNote", json=huge, headers=auth)
    assert response.status_code == 413
    assert recorder.calls == []
