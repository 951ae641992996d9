"""What the embedded edge adds to a call: REST and gRPC-Web through the edge against a direct
gRPC call to the same upstream, in the same run.

    python bench/bench_edge.py [--calls 2000] [--warmup 200]

In this process: one medmesh gRPC server (the services' interceptor chain) serving
IngestService.GetStudy, a trivial ext_authz peer that answers a pre-encoded OK without parsing
the request (so the figure is the edge's own cost plus its Check hop, not svc_auth's token
check; bench_auth.py measures that), and the edge on uvicorn, logging every request as JSON
the way it does in production (to /dev/null here). One client at a time, keep-alive:

  floor    = GetStudy over grpc.aio, direct to the upstream;
  rest     = GET /v1/studies/s1 through the edge (Check + transcoding + forward), httpx;
  grpc-web = POST /medmesh.ingest.v1.IngestService/GetStudy through the edge, httpx;
  http     = GET /healthz on the edge (uvicorn + httpx alone: the HTTP client/server floor);
  check    = the ext_authz Check hop alone: one Check call over grpc.aio, direct to the same
             Check peer, with a CheckRequest the edge would send (what the edge must add).

Prints p50/p99 in ms for each, what the edge adds at p50 over the direct call (goal: at most
1 ms), and the CPU time per call of this whole process (client, edge and servers together),
which moves less than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _results import record  # noqa: E402
from envoy_data_plane.envoy.service.auth.v3 import (  # noqa: E402
    CheckResponse,
    OkHttpResponse,
)
from envoy_data_plane.google.rpc import Status  # noqa: E402

from gen.medmesh.ingest.v1 import GetStudyRequest, GetStudyResponse, Study  # noqa: E402
from medmesh.client import AsyncStub  # noqa: E402
from medmesh.contract import DescriptorImage  # noqa: E402
from medmesh.edge import EdgeSettings, serve_edge  # noqa: E402
from medmesh.edge.authz import CHECK_PATH, HttpRequestInfo, encode_check_request  # noqa: E402
from medmesh.server import GrpcServer  # noqa: E402
from medmesh.telemetry import configure_logging  # noqa: E402

INGEST = "medmesh.ingest.v1.IngestService"
FLOOR = "floor: direct gRPC"
CHECK = "the Check hop alone (direct)"
ROUNDS = 4


class Ingest:
    """GetStudy answering a small study, like a cache hit in svc_ingest."""

    async def get_study(self, request: GetStudyRequest, _context: Any) -> GetStudyResponse:
        return GetStudyResponse(
            study=Study(name=request.name, clinic_id="clinic-a", patient_ref="p-1")
        )


_ALLOW = bytes(CheckResponse(status=Status(code=0), ok_response=OkHttpResponse()))


async def _check(_request: bytes, _context: Any) -> bytes:
    return _ALLOW


async def _authz_server() -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        _check, request_deserializer=None, response_serializer=None
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "envoy.service.auth.v3.Authorization", {"Check": handler}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _measure(
    call: Callable[[], Awaitable[None]], calls: int, warmup: int
) -> tuple[list[float], float]:
    """Wall-clock seconds of each call, and the process's CPU seconds per call."""
    for _ in range(warmup):
        await call()
    samples = []
    cpu_started = time.process_time()
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples, (time.process_time() - cpu_started) / calls


def _p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1] * 1000


def production_logging_to_devnull() -> None:
    """The edge's per-request JSON log line costs what it costs in production; its text goes
    to /dev/null instead of this terminal."""
    real_stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115
    try:
        configure_logging("edge", "info")
    finally:
        sys.stdout = real_stdout


async def main(calls: int, warmup: int) -> None:
    image = DescriptorImage()
    upstream = GrpcServer(image, {INGEST: Ingest()})
    upstream_addr = await upstream.start()
    authz, authz_addr = await _authz_server()
    stop = asyncio.Event()
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    settings = EdgeSettings(
        upstreams={"ingest": upstream_addr}, authz_addr=authz_addr, metrics_addr=""
    )
    edge = asyncio.create_task(serve_edge(settings, image=image, stop=stop, started=started))
    url = await started
    request = GetStudyRequest(name="studies/s1")
    frame = struct.pack(">BI", 0, len(bytes(request))) + bytes(request)
    web_headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    try:
        async with (
            grpc.aio.insecure_channel(upstream_addr) as channel,
            grpc.aio.insecure_channel(authz_addr) as authz_channel,
            httpx.AsyncClient(base_url=url) as client,
        ):
            stub = AsyncStub(channel, INGEST, image)
            check_call = authz_channel.unary_unary(CHECK_PATH)
            check_request = encode_check_request(
                HttpRequestInfo(
                    method="GET",
                    path="/v1/studies/s1",
                    headers=[("host", url.split("//")[1]), ("accept", "*/*")],
                    host=url.split("//")[1],
                    scheme="http",
                    protocol="HTTP/1.1",
                    client=("127.0.0.1", 50000),
                    server=("127.0.0.1", 8080),
                    request_id="bench",
                )
            )

            async def check_hop() -> None:
                await check_call(check_request, timeout=2)

            async def direct() -> None:
                await stub.get_study(request)

            async def rest() -> None:
                response = await client.get("/v1/studies/s1")
                assert response.status_code == 200, response.text

            async def grpc_web() -> None:
                response = await client.post(
                    f"/{INGEST}/GetStudy", content=frame, headers=web_headers
                )
                assert response.content.endswith(b"grpc-status: 0\r\n"), response.content

            async def health() -> None:
                await client.get("/healthz")

            calls_of = {
                FLOOR: direct,
                "edge REST": rest,
                "edge gRPC-Web": grpc_web,
                "edge /healthz (HTTP floor)": health,
                CHECK: check_hop,
            }
            # Interleaved in rounds, so that a busy moment on the shared machine lands on
            # every path rather than on whichever ran then.
            results: dict[str, list[float]] = {name: [] for name in calls_of}
            cpu: dict[str, list[float]] = {name: [] for name in calls_of}
            for _ in range(ROUNDS):
                for name, call in calls_of.items():
                    samples, cpu_per_call = await _measure(call, calls // ROUNDS, warmup // ROUNDS)
                    results[name] += samples
                    cpu[name].append(cpu_per_call)
    finally:
        stop.set()
        await edge
        await authz.stop(0)
        await upstream.stop(0)
    floor50, floor99 = _p(results[FLOOR], 50), _p(results[FLOOR], 99)
    floor_cpu = statistics.median(cpu[FLOOR]) * 1e6
    http50 = _p(results["edge /healthz (HTTP floor)"], 50)
    check50 = _p(results[CHECK], 50)
    print(f"{len(results[FLOOR])} sequential calls each, after warm-up; ms")
    print(f"{'':30} {'p50':>8} {'p99':>8} {'p50/floor':>10} {'p50-floor':>10} {'CPU us/call':>12}")
    for name, samples in results.items():
        p50, p99 = _p(samples, 50), _p(samples, 99)
        cpu_us = statistics.median(cpu[name]) * 1e6
        print(
            f"{name:30} {p50:8.3f} {p99:8.3f} {p50 / floor50:10.2f} {p50 - floor50:10.3f}"
            f" {cpu_us:12.0f}"
        )
        if name in ("edge REST", "edge gRPC-Web"):
            record(
                "bench_edge.py",
                f"P2: {name} p50 (p99 {p99:.2f} ms; CPU {cpu_us:.0f} vs {floor_cpu:.0f} us/call)",
                round(p50, 3),
                "ms",
                floor=round(floor50, 3),
                floor_name=f"direct gRPC GetStudy p50 (p99 {floor99:.2f} ms)",
                ratio=round(p50 - floor50, 3),
                ratio_name="added ms (figure - floor)",
                goal="adds <= 1 ms p50",
                met=p50 - floor50 <= 1.0,
                note=f"{p50 - http50:.2f} ms over the edge's bare HTTP round trip (/healthz p50"
                f" {http50:.2f} ms), which includes the httpx client's own cost; the ext_authz"
                f" Check hop alone (a direct Check call) p50 {check50:.2f} ms",
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    production_logging_to_devnull()
    asyncio.run(main(args.calls, args.warmup))
