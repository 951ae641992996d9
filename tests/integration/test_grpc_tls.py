"""TLS between medmesh processes (issue 11, item 12): a service's gRPC server with
MEDMESH_GRPC_TLS_CERT_FILE/KEY_FILE serves TLS only; the container healthcheck, the edge's
upstream channels and `medmesh.transport.grpc_channel` verify it against a CA generated here,
and refuse a server they cannot verify."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.pki import Pki, make_pki

from medmesh.contract import DescriptorImage
from medmesh.edge.settings import EdgeSettings
from medmesh.edge.upstreams import Upstreams
from medmesh.healthcheck import check_grpc
from medmesh.server import GrpcServer
from medmesh.settings import Settings, SettingsError
from medmesh.transport import grpc_channel

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost it signed, and a CA nobody trusts."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[int]:
    """A medmesh GrpcServer with TLS configured as Settings would configure it: its port."""
    settings = Settings.from_env(
        {
            "MEDMESH_GRPC_TLS_CERT_FILE": str(pki.server_cert),
            "MEDMESH_GRPC_TLS_KEY_FILE": str(pki.server_key),
        },
        service="ingest",
    )
    server = GrpcServer(
        DescriptorImage(),
        {},
        address="127.0.0.1:0",
        tls_cert_file=settings.grpc_tls_cert_file,
        tls_key_file=settings.grpc_tls_key_file,
    )
    address = await server.start()
    try:
        yield int(address.rpartition(":")[2])
    finally:
        await server.stop(0)


async def _health(channel: grpc.aio.Channel) -> int:
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return reply.status


async def test_a_client_with_the_ca_reaches_the_tls_server_by_its_name(
    tls_server: int, pki: Pki
) -> None:
    channel = grpc_channel(f"https://localhost:{tls_server}", ca_file=str(pki.ca))
    assert await _health(channel) == SERVING


@pytest.mark.parametrize(
    ("address", "ca"),
    [
        ("https://localhost:{port}", "rogue"),  # signed by another CA
        ("https://127.0.0.2:{port}", "ca"),  # a name the certificate does not carry
        ("localhost:{port}", "ca"),  # plaintext to a TLS-only port
    ],
)
async def test_a_client_refuses_a_server_it_cannot_verify_and_plaintext_gets_nothing(
    tls_server: int, pki: Pki, address: str, ca: str
) -> None:
    ca_file = str(pki.rogue_ca if ca == "rogue" else pki.ca)
    channel = grpc_channel(address.format(port=tls_server), ca_file=ca_file)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _health(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_edge_reaches_https_upstreams_with_its_ca(tls_server: int, pki: Pki) -> None:
    settings = EdgeSettings.from_env(
        {
            "MEDMESH_AUTH_ADDR": f"https://localhost:{tls_server}",
            "MEDMESH_EDGE_UPSTREAM_CA_FILE": str(pki.ca),
        }
    )
    upstreams = Upstreams(settings.upstreams, ca_file=settings.upstream_ca_file)
    channel = upstreams.channel("auth")
    assert channel is not None
    assert await _health(channel) == SERVING


@pytest.mark.parametrize(
    ("ca", "name", "healthy"),
    [("ca", "localhost", True), ("rogue", "localhost", False), ("ca", "svc-evil", False)],
)
async def test_the_container_healthcheck_verifies_the_tls_listener(
    tls_server: int, pki: Pki, ca: str, name: str, healthy: bool
) -> None:
    ca_file = str(pki.rogue_ca if ca == "rogue" else pki.ca)
    ok, detail = await asyncio.to_thread(
        check_grpc, f"127.0.0.1:{tls_server}", ca_file=ca_file, tls_name=name
    )
    assert ok is healthy, detail


async def test_the_healthcheck_module_exits_0_on_the_tls_listener_with_the_ca(
    tls_server: int, pki: Pki
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "medmesh.healthcheck", f"127.0.0.1:{tls_server}",
        "--ca-file", str(pki.ca),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stdout
    assert stdout.decode().strip().endswith("SERVING")


def test_a_certificate_without_its_key_is_refused_at_start_up() -> None:
    with pytest.raises(SettingsError, match="go together"):
        Settings.from_env({"MEDMESH_GRPC_TLS_CERT_FILE": "/tls.crt"}, service="auth")
