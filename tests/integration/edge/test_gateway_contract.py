"""The gateway contract, black-box: what any medmesh gateway must do, checked only through
HTTP. Runs against the embedded edge, or against the gateway `MEDMESH_GATEWAY_URL` names
(Envoy from envoy/envoy.yaml in front of a running stack):

    MEDMESH_GATEWAY_URL=http://127.0.0.1:8080 pytest tests/integration/edge/test_gateway_contract.py
"""

from __future__ import annotations

import base64
import struct

import httpx
import pytest
from edge_harness import grpc_web_body, parse_grpc_web

from gen.medmesh.auth.v1 import GetJwksRequest, GetJwksResponse

PROTECTED = [
    ("GET", "/v1/studies"),
    ("GET", "/v1/studies/s1"),
    ("DELETE", "/v1/studies/s1"),
    ("GET", "/v1/studies/s1/results"),
    ("GET", "/v1/models"),
    ("POST", "/v1/reports:generate"),
    ("GET", "/v1/users/me"),
    ("GET", "/v1/deadLetters"),
]


async def test_the_gateway_reports_itself_healthy(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/healthz")
    assert response.status_code == 200


async def test_the_public_signing_keys_are_served_without_a_token(
    gateway: httpx.AsyncClient,
) -> None:
    response = await gateway.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    keys = response.json()["keys"]
    assert keys
    assert all(key["kid"] and key["kty"] for key in keys)


@pytest.mark.parametrize(("verb", "path"), PROTECTED)
async def test_a_protected_route_without_a_token_is_401_with_a_status_body(
    gateway: httpx.AsyncClient, verb: str, path: str
) -> None:
    response = await gateway.request(verb, path, json={} if verb == "POST" else None)
    assert response.status_code == 401
    assert response.json()["code"] == 16


@pytest.mark.parametrize("text", [False, True])
async def test_grpc_web_serves_a_unary_call_in_both_modes(
    gateway: httpx.AsyncClient, text: bool
) -> None:
    response = await gateway.post(
        "/medmesh.auth.v1.AuthService/GetJwks",
        content=grpc_web_body(bytes(GetJwksRequest()), text=text),
        headers={
            "content-type": "application/grpc-web-text" if text else "application/grpc-web+proto",
            "x-grpc-web": "1",
        },
    )
    assert response.status_code == 200
    reply = parse_grpc_web(response, text=text)
    assert reply.code == 0
    [message] = reply.messages
    assert GetJwksResponse.FromString(message).keys


async def test_grpc_web_without_a_token_is_unauthenticated(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post(
        "/medmesh.ingest.v1.IngestService/ListStudies",
        content=struct.pack(">BI", 0, 0),
        headers={"content-type": "application/grpc-web+proto"},
    )
    reply = parse_grpc_web(response)
    assert reply.code == 16


async def test_a_text_mode_body_may_arrive_in_several_base64_chunks(
    gateway: httpx.AsyncClient,
) -> None:
    frame = grpc_web_body(bytes(GetJwksRequest()))
    chunked = base64.b64encode(frame[:2]) + base64.b64encode(frame[2:])
    response = await gateway.post(
        "/medmesh.auth.v1.AuthService/GetJwks",
        content=chunked,
        headers={"content-type": "application/grpc-web-text"},
    )
    assert parse_grpc_web(response, text=True).code == 0
