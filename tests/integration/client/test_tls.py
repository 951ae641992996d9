"""TLS: the SDK and the CLI reach a gRPC server that only speaks TLS, trusting a private CA
given to them; without it, or in plaintext, they do not get through."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gen.medmesh.auth.v1 import LoginRequest, LoginResponse, User
from medmesh.client import MedmeshClient, RetryPolicy

AUTH = "medmesh.auth.v1.AuthService"


def self_signed_localhost() -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for `localhost`, its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


async def login(request: LoginRequest, _context: Any) -> LoginResponse:
    """Any password works: this server tests the transport, not svc_auth."""
    return LoginResponse(
        access_token="access",
        refresh_token="refresh",
        expires_in=900,
        user=User(email=request.email, clinic_id="clinic-tls"),
    )


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """A TLS-only gRPC server with AuthService.Login on localhost; (address, CA file)."""
    certificate, key = self_signed_localhost()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(certificate)
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        login, request_deserializer=LoginRequest.FromString, response_serializer=bytes
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(AUTH, {"Login": handler})]
    )
    port = server.add_secure_port("localhost:0", grpc.ssl_server_credentials([(key, certificate)]))
    await server.start()
    try:
        yield f"localhost:{port}", ca_file
    finally:
        await server.stop(0)


async def test_the_sdk_logs_in_over_tls_with_a_private_ca(tls_server: tuple[str, Path]) -> None:
    address, ca_file = tls_server
    async with MedmeshClient(address, tls=True, root_certificates=ca_file.read_bytes()) as client:
        response = await client.login("someone@clinic.example", "pw")
    assert response.user.clinic_id == "clinic-tls"


@pytest.mark.parametrize(
    ("tls", "trust_ca"), [(False, False), (True, False)], ids=["plaintext", "untrusted CA"]
)
async def test_without_tls_or_the_ca_the_call_does_not_get_through(
    tls_server: tuple[str, Path], tls: bool, trust_ca: bool
) -> None:
    address, ca_file = tls_server
    roots = ca_file.read_bytes() if trust_ca else None
    no_retries = RetryPolicy(attempts=1)
    async with MedmeshClient(
        address, tls=tls, root_certificates=roots, retry=no_retries, timeout_s=5
    ) as client:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.login("someone@clinic.example", "pw")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_cli_logs_in_over_tls_and_remembers_it(
    tls_server: tuple[str, Path], tmp_path: Path
) -> None:
    address, ca_file = tls_server
    command = [
        sys.executable, "-m", "medmesh.cli", "login", "--addr", address, "--tls",
        "--ca-file", str(ca_file), "--email", "someone@clinic.example", "--password-stdin",
    ]  # fmt: skip
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("MEDMESH_ADDR", None)
    result = await asyncio.to_thread(
        subprocess.run,
        command,
        input="pw\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "of clinic-tls" in result.stderr
    stored = (tmp_path / "config" / "medmesh" / "credentials.json").read_text()
    assert '"tls": true' in stored
