"""Fetching the token-signing keys (JWKS) from svc_auth's address: over TLS the server's
certificate is verified (our CA, its name), and plaintext is refused unless the address is
loopback or MEDMESH_JWKS_ALLOW_PLAINTEXT allows it. The server is a real gRPC server on a
free port with a certificate from a throw-away CA (tests/support/pki.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from support.pki import Pki, make_pki

from gen.medmesh.auth.v1 import GetJwksRequest, GetJwksResponse, Jwk
from medmesh.auth.jwks import GrpcJwksSource
from medmesh.errors import DependencyUnavailable
from medmesh.settings import Settings, SettingsError

KEY = Jwk(kty="OKP", kid="k1", alg="EdDSA", use="sig", crv="Ed25519", x="AAAA")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1 it signed, and a CA nobody trusts."""
    return make_pki(tmp_path_factory.mktemp("jwks-pki"))


async def _jwks_server(pki: Pki, host: str) -> tuple[grpc.aio.Server, int]:
    async def get_jwks(_request: GetJwksRequest, _context: Any) -> GetJwksResponse:
        return GetJwksResponse(keys=[KEY])

    handler = grpc.method_handlers_generic_handler(
        "medmesh.auth.v1.AuthService",
        {
            "GetJwks": grpc.unary_unary_rpc_method_handler(
                get_jwks,
                request_deserializer=GetJwksRequest.FromString,
                response_serializer=bytes,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([handler])
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())]
    )
    port = server.add_secure_port(f"{host}:0", credentials)
    await server.start()
    return server, port


@pytest.fixture
async def tls_auth(pki: Pki) -> AsyncIterator[Callable[[str], Any]]:
    """Starts TLS JWKS servers on a loopback address on demand; stops them afterwards."""
    servers: list[grpc.aio.Server] = []

    async def start(host: str) -> int:
        server, port = await _jwks_server(pki, host)
        servers.append(server)
        return port

    yield start
    for server in servers:
        await server.stop(None)


async def _fetch(address: str, **options: Any) -> Any:
    source = GrpcJwksSource(address, timeout_s=5, **options)
    try:
        return await source.fetch()
    finally:
        await source.close()


@pytest.mark.parametrize("scheme", ["https", "grpcs"])
async def test_the_jwks_is_fetched_over_tls_from_a_server_our_ca_signed(
    pki: Pki, tls_auth: Callable[[str], Any], scheme: str
) -> None:
    port = await tls_auth("127.0.0.1")
    settings = Settings.from_env(
        {"MEDMESH_AUTH_ADDR": f"{scheme}://127.0.0.1:{port}", "MEDMESH_JWKS_CA_FILE": str(pki.ca)},
        service="ingest",
    )

    document = await _fetch(settings.auth_addr, ca_file=settings.jwks_ca_file)

    assert [key["kid"] for key in document["keys"]] == ["k1"]


@pytest.mark.parametrize(
    ("host", "trusted"),
    [
        ("127.0.0.1", "system"),  # nobody's public CA signed it
        ("127.0.0.1", "rogue"),  # another CA with the same name
        ("127.0.0.2", "ours"),  # our CA, but the certificate does not name 127.0.0.2
    ],
)
async def test_a_jwks_server_whose_certificate_does_not_verify_is_unavailable(
    pki: Pki, tls_auth: Callable[[str], Any], host: str, trusted: str
) -> None:
    port = await tls_auth(host)
    ca_file = {"system": "", "rogue": str(pki.rogue_ca), "ours": str(pki.ca)}[trusted]

    with pytest.raises(DependencyUnavailable):
        await _fetch(f"https://{host}:{port}", ca_file=ca_file)


@pytest.mark.parametrize(
    "address",
    ["svc-auth:50051", "http://svc-auth:50051", "10.1.2.3:50051", "grpc://[2001:db8::1]:1"],
)
def test_a_plaintext_jwks_address_off_this_host_is_refused_at_start_up(address: str) -> None:
    with pytest.raises(SettingsError, match="MEDMESH_JWKS_ALLOW_PLAINTEXT"):
        GrpcJwksSource(address)


@pytest.mark.parametrize("address", ["ftp://svc-auth:21", "svc-auth", "https://:443"])
def test_an_address_that_is_not_host_and_port_is_refused(address: str) -> None:
    with pytest.raises(SettingsError, match="MEDMESH_AUTH_ADDR"):
        GrpcJwksSource(address)


@pytest.mark.parametrize("address", ["127.0.0.1:1", "localhost:1", "[::1]:1", "http://127.0.0.5:1"])
async def test_a_plaintext_jwks_address_on_loopback_is_allowed(address: str) -> None:
    source = GrpcJwksSource(address)
    await source.close()


async def test_plaintext_off_this_host_is_allowed_only_when_the_setting_says_so() -> None:
    settings = Settings.from_env(
        {"MEDMESH_AUTH_ADDR": "svc-auth:50051", "MEDMESH_JWKS_ALLOW_PLAINTEXT": "true"},
        service="report",
    )

    source = GrpcJwksSource(settings.auth_addr, allow_plaintext=settings.jwks_allow_plaintext)
    await source.close()
    assert source.address == "svc-auth:50051"
