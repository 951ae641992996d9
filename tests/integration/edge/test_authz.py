"""ext_authz at the embedded edge against a real `Authorization/Check` server: the
CheckRequest it sends, how it obeys each answer, what it never checks, and failing closed."""

from __future__ import annotations

import httpx
import pytest
from edge_harness import AuthzPeer, Recorder, denial, grpc_web_body, parse_grpc_web, running_edge
from envoy_data_plane.envoy.config.core.v3 import HeaderValue, HeaderValueOption
from envoy_data_plane.envoy.service.auth.v3 import CheckResponse, OkHttpResponse
from envoy_data_plane.envoy.type.v3 import StatusCode
from envoy_data_plane.google.rpc import Status

from gen.medmesh.ingest.v1 import GetStudyRequest
from medmesh.contract import DescriptorImage
from medmesh.edge import EdgeSettings


async def test_the_check_request_carries_what_envoy_sends(
    http: httpx.AsyncClient, authz: AuthzPeer, auth: dict[str, str]
) -> None:
    await http.get(
        "/v1/studies?pageSize=2", headers={**auth, "x-request-id": "r-1", "x-trace": "a"}
    )
    [check] = authz.requests
    attributes = check.attributes
    request = attributes.request.http
    assert (request.method, request.path, request.id) == ("GET", "/v1/studies?pageSize=2", "r-1")
    assert request.host == http.base_url.netloc.decode()
    assert request.scheme == "http"
    assert request.protocol == "HTTP/1.1"
    assert request.headers["authorization"] == auth["authorization"]
    assert request.headers[":path"] == "/v1/studies?pageSize=2"
    assert request.headers[":method"] == "GET"
    assert request.headers[":authority"] == request.host
    assert request.headers["x-trace"] == "a"
    assert attributes.source.address.socket_address.address == "127.0.0.1"
    assert attributes.source.address.socket_address.port_value > 0
    assert attributes.destination.address.socket_address.port_value == http.base_url.port
    assert attributes.request.time is not None


@pytest.mark.parametrize(
    ("answer", "status", "headers"),
    [
        (
            denial(StatusCode.Unauthorized, 16, "token expired", www_authenticate="Bearer"),
            401,
            {"www-authenticate": "Bearer"},
        ),
        (denial(StatusCode.Forbidden, 7, "viewers cannot delete"), 403, {}),
        (
            denial(StatusCode.TooManyRequests, 8, "too many requests", retry_after="7"),
            429,
            {"retry-after": "7"},
        ),
        (CheckResponse(status=Status(code=7, message="no")), 403, {}),
    ],
)
async def test_a_denial_is_answered_with_its_status_headers_and_body_and_goes_nowhere(
    http: httpx.AsyncClient,
    authz: AuthzPeer,
    recorder: Recorder,
    auth: dict[str, str],
    answer: CheckResponse,
    status: int,
    headers: dict[str, str],
) -> None:
    authz.answers.append(answer)
    response = await http.delete("/v1/studies/s1", headers=auth)
    assert response.status_code == status
    for name, value in headers.items():
        assert response.headers[name] == value
    assert response.json()["code"] == answer.status.code
    assert recorder.calls == []


@pytest.mark.parametrize(
    ("answer", "code", "headers"),
    [
        (denial(StatusCode.Unauthorized, 16, "token expired"), 16, {}),
        (
            denial(StatusCode.TooManyRequests, 8, "slow down", retry_after="3"),
            8,
            {"retry-after": "3"},
        ),
    ],
)
async def test_a_denied_grpc_web_call_gets_the_check_status_as_grpc_status(
    http: httpx.AsyncClient,
    authz: AuthzPeer,
    recorder: Recorder,
    auth: dict[str, str],
    answer: CheckResponse,
    code: int,
    headers: dict[str, str],
) -> None:
    authz.answers.append(answer)
    response = await http.post(
        "/medmesh.ingest.v1.IngestService/GetStudy",
        content=grpc_web_body(bytes(GetStudyRequest(name="studies/s1"))),
        headers={**auth, "content-type": "application/grpc-web+proto"},
    )
    reply = parse_grpc_web(response)
    assert (reply.http_status, reply.code) == (200, code)
    assert reply.message == answer.status.message
    for name, value in headers.items():
        assert response.headers[name] == value
    assert recorder.calls == []


async def test_without_a_token_the_peer_refuses_and_with_one_identity_headers_go_upstream(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str]
) -> None:
    refused = await http.get("/v1/studies/s1")
    assert refused.status_code == 401
    assert refused.json()["code"] == 16
    accepted = await http.get("/v1/studies/s1", headers=auth)
    assert accepted.status_code == 200
    assert recorder.last("GetStudy").metadata["x-medmesh-user"] == "u-1"


async def test_ok_response_headers_are_added_removed_and_returned_to_the_client(
    http: httpx.AsyncClient, authz: AuthzPeer, recorder: Recorder, auth: dict[str, str]
) -> None:
    def header(key: str, value: str) -> HeaderValueOption:
        return HeaderValueOption(header=HeaderValue(key=key, value=value))

    authz.answers.append(
        CheckResponse(
            status=Status(code=0),
            ok_response=OkHttpResponse(
                headers=[header("x-medmesh-user", "u-from-authz")],
                headers_to_remove=["x-debug"],
                response_headers_to_add=[header("x-ratelimit-remaining", "41")],
            ),
        )
    )
    response = await http.get("/v1/studies/s1", headers={**auth, "x-debug": "1"})
    assert response.headers["x-ratelimit-remaining"] == "41"
    metadata = recorder.last("GetStudy").metadata
    assert metadata["x-medmesh-user"] == "u-from-authz"
    assert "x-debug" not in metadata


@pytest.mark.parametrize("path", ["/healthz", "/.well-known/jwks.json"])
async def test_probes_and_the_public_keys_are_never_checked(
    http: httpx.AsyncClient, authz: AuthzPeer, path: str
) -> None:
    authz.answers.append(denial(StatusCode.Forbidden, 7, "would refuse"))
    response = await http.get(path)
    assert response.status_code == 200
    assert authz.requests == []


async def test_preflights_are_never_checked(http: httpx.AsyncClient, authz: AuthzPeer) -> None:
    authz.answers.append(denial(StatusCode.Forbidden, 7, "would refuse"))
    response = await http.options(
        "/v1/studies",
        headers={"origin": "https://app.medmesh.test", "access-control-request-method": "POST"},
    )
    assert response.status_code == 204
    assert authz.requests == []


async def test_when_the_authorization_service_is_down_the_edge_fails_closed(
    image: DescriptorImage, upstreams: dict[str, str], recorder: Recorder, auth: dict[str, str]
) -> None:
    settings = EdgeSettings(
        upstreams=upstreams, authz_addr="127.0.0.1:1", metrics_addr="", authz_timeout_s=1
    )
    async with running_edge(settings, image) as url, httpx.AsyncClient(base_url=url) as client:
        rest = await client.get("/v1/studies/s1", headers=auth)
        web = await client.post(
            "/medmesh.ingest.v1.IngestService/GetStudy",
            content=grpc_web_body(b""),
            headers={**auth, "content-type": "application/grpc-web+proto"},
        )
    assert rest.status_code == 503
    assert rest.json()["code"] == 14
    assert parse_grpc_web(web).code == 14
    assert recorder.calls == []
