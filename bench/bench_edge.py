"""What the embedded edge adds to a call: REST and gRPC-Web through the edge against a direct
gRPC call to the same upstream, in the same run.

    python bench/bench_edge.py [--calls 2000] [--warmup 200]

In this process: one medmesh gRPC server (the services' interceptor chain) serving
IngestService.GetStudy, a trivial ext_authz peer that answers OK at once (so the figure is
the edge's own cost plus its Check hop, not svc_auth's token check; bench_auth.py measures
that), and the edge on uvicorn. One client at a time, keep-alive connections:

  floor    = GetStudy over grpc.aio, direct to the upstream;
  rest     = GET /v1/studies/s1 through the edge (Check + transcoding + forward), httpx;
  grpc-web = POST /medmesh.ingest.v1.IngestService/GetStudy through the edge, httpx;
  http     = GET /healthz on the edge (uvicorn + httpx alone: the HTTP client/server floor).

Prints p50/p99 in ms for each and the ratios against the direct gRPC call.
"""

from __future__ import annotations

import argparse
import asyncio
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

from envoy_data_plane.envoy.service.auth.v3 import (  # noqa: E402
    CheckRequest,
    CheckResponse,
    OkHttpResponse,
)
from envoy_data_plane.google.rpc import Status  # noqa: E402

from gen.medmesh.ingest.v1 import GetStudyRequest, GetStudyResponse, Study  # noqa: E402
from medmesh.client import AsyncStub  # noqa: E402
from medmesh.contract import DescriptorImage  # noqa: E402
from medmesh.edge import EdgeSettings, serve_edge  # noqa: E402
from medmesh.server import GrpcServer  # noqa: E402

INGEST = "medmesh.ingest.v1.IngestService"


class Ingest:
    """GetStudy answering a small study, like a cache hit in svc_ingest."""

    async def get_study(self, request: GetStudyRequest, _context: Any) -> GetStudyResponse:
        return GetStudyResponse(
            study=Study(name=request.name, clinic_id="clinic-a", patient_ref="p-1")
        )


async def _check(_request: CheckRequest, _context: Any) -> CheckResponse:
    return CheckResponse(status=Status(code=0), ok_response=OkHttpResponse())


async def _authz_server() -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        _check, request_deserializer=CheckRequest.FromString, response_serializer=bytes
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


async def _measure(call: Callable[[], Awaitable[None]], calls: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


def _p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1] * 1000


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
            httpx.AsyncClient(base_url=url) as client,
        ):
            stub = AsyncStub(channel, INGEST, image)

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

            results = {
                "floor: direct gRPC": await _measure(direct, calls, warmup),
                "edge REST": await _measure(rest, calls, warmup),
                "edge gRPC-Web": await _measure(grpc_web, calls, warmup),
                "edge /healthz (HTTP floor)": await _measure(health, calls, warmup),
            }
    finally:
        stop.set()
        await edge
        await authz.stop(0)
        await upstream.stop(0)
    floor50, floor99 = _p(results["floor: direct gRPC"], 50), _p(results["floor: direct gRPC"], 99)
    print(f"{calls} sequential calls each, after {warmup} warm-up calls; ms")
    print(f"{'':30} {'p50':>8} {'p99':>8} {'p50/floor':>10} {'p99/floor':>10}")
    for name, samples in results.items():
        p50, p99 = _p(samples, 50), _p(samples, 99)
        print(f"{name:30} {p50:8.3f} {p99:8.3f} {p50 / floor50:10.2f} {p99 / floor99:10.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.warmup))
