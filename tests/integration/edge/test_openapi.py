"""The OpenAPI document (gen/openapi/medmesh.swagger.json, generated from proto/ by
protoc-gen-swagger) as an integrator meets it: served by a real edge at /openapi.json without a
token, valid Swagger 2.0, one operation per REST route of the contract, each path one the edge
really routes; and a property-based run of schemathesis over it finds no 5xx at the edge."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from edge_harness import AuthzPeer, Recorder
from openapi_spec_validator.validation import OpenAPIV2SpecValidator
from support import fuzz
from support.tokens import TokenFactory

from medmesh.contract import DescriptorImage
from medmesh.edge.routes import RouteTable
from medmesh.openapi import spell_out_path_templates

OPERATIONS = ("get", "put", "post", "delete", "patch")
# schemathesis's budget: a few derandomized examples per operation keep the run near a minute
# on two busy cores while still sending every operation malformed paths, queries and bodies.
MAX_EXAMPLES = 10
FUZZ_TIMEOUT_S = 300


async def _document(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


async def test_openapi_document_is_served_without_a_token_or_an_authorization_check(
    http: httpx.AsyncClient, authz: AuthzPeer
) -> None:
    document = await _document(http)
    assert document["swagger"] == "2.0"
    assert authz.requests == []


async def test_openapi_document_is_valid_swagger_2(http: httpx.AsyncClient) -> None:
    errors = [str(e) for e in OpenAPIV2SpecValidator(await _document(http)).iter_errors()]
    assert errors == []


async def test_openapi_document_has_one_operation_per_rest_route_of_the_contract(
    http: httpx.AsyncClient, image: DescriptorImage
) -> None:
    document = await _document(http)
    described = {
        (verb.upper(), path, op["operationId"])
        for path, operations in document["paths"].items()
        for verb, op in operations.items()
        if verb in OPERATIONS
    }
    routes = RouteTable(image).rest
    # The contract's templates spelled out the same way, path by path.
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.template.source, {})[route.http_method.lower()] = {}
    table = {"paths": paths}
    spelled = {
        (verb.upper(), path)
        for path, ops in spell_out_path_templates(table)["paths"].items()
        for verb in ops
    }
    assert {(verb, path) for verb, path, _ in described} == spelled
    assert len(described) == len(routes)


async def test_every_path_of_the_openapi_document_is_routed_by_the_edge_to_its_rpc(
    http: httpx.AsyncClient, image: DescriptorImage
) -> None:
    document = await _document(http)
    table = RouteTable(image)
    unrouted = []
    for path, operations in document["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "id-1", path)
        for verb, op in operations.items():
            match = table.match_rest(verb.upper(), concrete)
            if match is None or match.route.rpc.method.name != op["operationId"]:
                unrouted.append(f"{verb.upper()} {path}")
    assert unrouted == []


async def test_schemathesis_finds_no_server_error_at_the_edge(
    edge: str, tokens: TokenFactory, image: DescriptorImage, tmp_path: Path
) -> None:
    token = tokens.mint(user_id="u-1", clinic_id="clinic-a", roles=["admin"])
    report = tmp_path / "schemathesis.ndjson"
    process = await asyncio.create_subprocess_exec(
        *fuzz.command(edge, token, report, MAX_EXAMPLES),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    output, _ = await asyncio.wait_for(process.communicate(), FUZZ_TIMEOUT_S)
    assert process.returncode == 0, output.decode(errors="replace")[-6000:]
    statuses = fuzz.statuses_by_operation(report)
    # Every REST route was exercised, and each answered 2xx at least once: the generated
    # requests were well-formed enough to reach the services, not only refused at the edge.
    assert len(statuses) == len(RouteTable(image).rest)
    assert [op for op, codes in statuses.items() if not any(200 <= c < 300 for c in codes)] == []
    assert fuzz.FuzzRun(0, "", statuses).server_errors() == {}


# Bodies the schemathesis runs found answered 500 (or 200 with no request sent): JSON of the
# wrong shape for a field, an integer too large for its field.
@pytest.mark.parametrize(
    ("url", "verb", "body"),
    [
        ("/v1/clinics/c/deliveryTarget", "PUT", {"updateTime": [None, None]}),
        ("/v1/models/m:setTrafficSplit", "POST", {"trafficSplit": [[None, None]]}),
        ("/v1/clinics/c/deliveryTarget", "PUT", {"fhirBaseUrl": {"a": 1}}),
        ("/v1/clinics/c/deliveryTarget", "PUT", {"notifyEmails": [1, True]}),
        ("/v1/clinics/c/deliveryTarget", "PUT", {"enabled": "yes"}),
        (
            "/v1/models/m:setTrafficSplit",
            "POST",
            {"trafficSplit": [{"version": "1", "weight": 2**80}]},
        ),
    ],
)
async def test_a_body_field_of_the_wrong_json_shape_or_range_is_400_and_never_forwarded(
    http: httpx.AsyncClient,
    recorder: Recorder,
    auth: dict[str, str],
    url: str,
    verb: str,
    body: dict[str, Any],
) -> None:
    response = await http.request(verb, url, json=body, headers=auth)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == 3
    assert recorder.calls == []


# Found against a real stack: an integer query value too large for its field reached the
# service as a varint it could not decode (UNKNOWN, 500).
@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/v1/deadLetters?pageSize=2674681775676791980032", "pageSize"),
        ("/v1/studies?pageSize=2147483648", "pageSize"),
        ("/v1/studies?pageSize=-2147483649", "pageSize"),
    ],
)
async def test_an_integer_query_value_out_of_its_fields_range_is_400_with_a_field_violation(
    http: httpx.AsyncClient, recorder: Recorder, auth: dict[str, str], url: str, field: str
) -> None:
    response = await http.get(url, headers=auth)
    assert response.status_code == 400, response.text
    [details] = response.json()["details"]
    assert [v["field"] for v in details["fieldViolations"]] == [field]
    assert "out of range" in details["fieldViolations"][0]["description"]
    assert recorder.calls == []
