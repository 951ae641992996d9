"""`python -m medmesh.healthcheck`, the container healthcheck, against a real gRPC health
server and a real HTTP server on free ports."""

from __future__ import annotations

import asyncio
import http.server
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from medmesh.healthcheck import HEALTHY, UNHEALTHY, main

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INGEST = "medmesh.ingest.v1.IngestService"


@pytest.fixture
async def health_server() -> AsyncIterator[tuple[str, health_aio.HealthServicer]]:
    """A grpc.aio server on a free port with only the standard health service."""
    server = grpc.aio.server()
    servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await server.stop(None)


class _StatusByPath(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(int(self.path.strip("/")))
        self.end_headers()

    def log_message(self, *args: object) -> None:
        """Quiet: the test output is not the place for access logs."""


@pytest.fixture
def http_server() -> Iterator[str]:
    """An HTTP server on a free port answering GET /<code> with that status code."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StatusByPath)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("server_status", "service_status", "args", "expected"),
    [
        (SERVING, None, [], HEALTHY),
        (NOT_SERVING, None, [], UNHEALTHY),
        (SERVING, SERVING, ["--service", INGEST], HEALTHY),
        (SERVING, NOT_SERVING, ["--service", INGEST], UNHEALTHY),
        (SERVING, None, ["--service", INGEST], UNHEALTHY),  # unknown service: NOT_FOUND
    ],
)
async def test_grpc_target_is_healthy_only_when_it_answers_serving(
    health_server: tuple[str, health_aio.HealthServicer],
    server_status: int,
    service_status: int | None,
    args: list[str],
    expected: int,
) -> None:
    address, servicer = health_server
    await servicer.set("", server_status)
    if service_status is not None:
        await servicer.set(INGEST, service_status)
    # The check is synchronous (it runs in its own process in a container): off the loop.
    assert await asyncio.to_thread(main, [address, *args, "--timeout", "2"]) == expected


async def test_unreachable_grpc_target_is_unhealthy_within_the_timeout(
    unused_tcp_port: int,
) -> None:
    target = f"127.0.0.1:{unused_tcp_port}"
    assert await asyncio.to_thread(main, [target, "--timeout", "0.5"]) == UNHEALTHY


@pytest.mark.parametrize(
    ("status", "expected"), [(200, HEALTHY), (503, UNHEALTHY), (404, UNHEALTHY)]
)
def test_http_target_is_healthy_only_on_200(http_server: str, status: int, expected: int) -> None:
    assert main([f"{http_server}/{status}", "--timeout", "2"]) == expected


async def test_the_module_exits_with_the_health_as_a_container_runtime_sees_it(
    health_server: tuple[str, health_aio.HealthServicer],
) -> None:
    address, servicer = health_server
    for status, code in ((SERVING, 0), (NOT_SERVING, 1)):
        await servicer.set("", status)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "medmesh.healthcheck", address,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == code
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        assert stdout.decode().strip() == f"{address}: {name}"
