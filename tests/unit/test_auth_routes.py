"""The gateway's route table: HTTP requests (REST, gRPC, gRPC-Web) → the RPC they call, and
the rule that RPC gets at the gateway."""

from __future__ import annotations

import pytest

from medmesh.contract import DescriptorImage
from medmesh.identity import ADMINS, PUBLIC, WRITERS
from svc_auth.gateway_rules import GATEWAY_RULES, rule_for
from svc_auth.routes import RouteTable, template_regex

AUTH = "medmesh.auth.v1.AuthService"
INGEST = "medmesh.ingest.v1.IngestService"


@pytest.fixture(scope="module")
def routes() -> RouteTable:
    """Routes of the real contract."""
    return RouteTable(DescriptorImage())


@pytest.mark.parametrize(
    ("method", "path", "rpc"),
    [
        ("POST", "/v1/auth:login", f"{AUTH}/Login"),
        ("GET", "/v1/users/me", f"{AUTH}/GetMe"),
        ("GET", "/v1/users?page_size=10", f"{AUTH}/ListUsers"),
        ("POST", "/v1/users/0b6f:setRoles", f"{AUTH}/SetUserRoles"),
        ("GET", "/.well-known/jwks.json", f"{AUTH}/GetJwks"),
        ("POST", f"/{AUTH}/Login", f"{AUTH}/Login"),
        ("GET", "/v1/studies/s1", f"{INGEST}/GetStudy"),
        ("GET", "/v1/studies/s1:watch", f"{INGEST}/WatchStudy"),
        ("DELETE", "/v1/studies/s1", f"{INGEST}/DeleteStudy"),
        ("POST", "/v1/studies/s1/files/f1:completeUpload", f"{INGEST}/CompleteUpload"),
        ("GET", "/v1/studies/s1/results/r1", "medmesh.infer.v1.InferenceService/GetResult"),
        ("POST", "/v1/users/me", None),  # wrong method
        ("GET", "/v1/studies/s1/extra/deep", None),
        ("GET", "/index.html", None),
    ],
)
def test_a_request_resolves_to_the_rpc_it_calls(
    routes: RouteTable, method: str, path: str, rpc: str | None
) -> None:
    assert routes.resolve(method, path) == rpc


def test_a_template_becomes_an_anchored_pattern_with_its_literal_length() -> None:
    pattern, literal = template_regex("/v1/{name=studies/*/files/*}:completeUpload")
    assert pattern.fullmatch("/v1/studies/a/files/b:completeUpload")
    assert not pattern.fullmatch("/v1/studies/a/b/files/c:completeUpload")
    assert literal == len("/v1/") + len("studies") + len("files") + len(":completeUpload")


@pytest.mark.parametrize(
    ("rpc", "rule"),
    [
        (f"{AUTH}/Login", PUBLIC),
        (f"{AUTH}/ListUsers", ADMINS),
        (f"{INGEST}/CreateStudy", WRITERS),
        ("medmesh.nope.v1.Unknown/Call", None),
    ],
)
def test_each_rpc_gets_its_own_rule_or_its_service_default(rpc: str, rule: object) -> None:
    assert rule_for(rpc) == rule


def test_every_rpc_of_the_contract_has_a_gateway_rule() -> None:
    image = DescriptorImage()
    missing = [
        f"{service}/{method.name}"
        for service in image.service_names("medmesh.")
        for method in image.methods(service)
        if rule_for(f"{service}/{method.name}", GATEWAY_RULES) is None
    ]
    assert missing == []
