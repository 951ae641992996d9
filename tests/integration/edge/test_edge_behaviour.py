"""The edge's own behaviour: CORS, its health endpoint, metrics, an upstream that is down or
slow, and `python -m medmesh.edge` as a process with a ready file and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
from edge_harness import (
    ALLOWED_ORIGIN,
    AuthzPeer,
    Recorder,
    grpc_web_body,
    parse_grpc_web,
    running_edge,
)

from gen.medmesh.ingest.v1 import GetStudyResponse
from medmesh.contract import DescriptorImage
from medmesh.edge import EdgeSettings, serve_edge
from medmesh.settings import SettingsError

PREFLIGHT = {"access-control-request-method": "POST", "access-control-request-headers": "x"}


async def test_an_allowed_origin_gets_a_preflight_answer(http: httpx.AsyncClient) -> None:
    response = await http.options("/v1/studies", headers={"origin": ALLOWED_ORIGIN, **PREFLIGHT})
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-grpc-web", "grpc-timeout"} <= allowed


async def test_another_origin_gets_no_cors_headers(http: httpx.AsyncClient) -> None:
    response = await http.options(
        "/v1/studies", headers={"origin": "https://evil.test", **PREFLIGHT}
    )
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers


async def test_responses_to_an_allowed_origin_expose_the_grpc_status_headers(
    http: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await http.post(
        "/medmesh.ingest.v1.IngestService/GetStudy",
        content=grpc_web_body(b""),
        headers={**auth, "origin": ALLOWED_ORIGIN, "content-type": "application/grpc-web+proto"},
    )
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    exposed = {h.strip() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed
    denied = await http.get("/v1/studies/s1", headers={"origin": ALLOWED_ORIGIN})
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


async def test_healthz_answers_serving(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "SERVING"})


async def test_an_upstream_that_is_down_is_503(
    image: DescriptorImage, upstreams: dict[str, str], authz: AuthzPeer, auth: dict[str, str]
) -> None:
    settings = EdgeSettings(
        upstreams={**upstreams, "ingest": "127.0.0.1:1"}, authz_addr=authz.address, metrics_addr=""
    )
    async with running_edge(settings, image) as url, httpx.AsyncClient(base_url=url) as client:
        rest = await client.get("/v1/studies/s1", headers=auth)
        web = await client.post(
            "/medmesh.ingest.v1.IngestService/GetStudy",
            content=grpc_web_body(b""),
            headers={**auth, "content-type": "application/grpc-web+proto"},
        )
        other = await client.get("/v1/reports/r1", headers=auth)
    assert (rest.status_code, rest.json()["code"]) == (503, 14)
    assert parse_grpc_web(web).code == 14
    assert other.status_code == 200


async def test_a_service_without_an_upstream_is_503_naming_it(
    image: DescriptorImage, upstreams: dict[str, str], authz: AuthzPeer, auth: dict[str, str]
) -> None:
    without_report = {k: v for k, v in upstreams.items() if k != "report"}
    settings = EdgeSettings(upstreams=without_report, authz_addr=authz.address, metrics_addr="")
    async with running_edge(settings, image) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/v1/reports/r1", headers=auth)
    assert response.status_code == 503
    assert "medmesh.report.v1.ReportService" in response.json()["message"]


async def test_a_slow_upstream_is_504_after_the_upstream_timeout(
    image: DescriptorImage,
    upstreams: dict[str, str],
    authz: AuthzPeer,
    recorder: Recorder,
    auth: dict[str, str],
) -> None:
    async def slow(_request: Any) -> GetStudyResponse:
        await asyncio.sleep(2)
        return GetStudyResponse()

    recorder.scripts["GetStudy"] = slow
    settings = EdgeSettings(
        upstreams=upstreams, authz_addr=authz.address, metrics_addr="", upstream_timeout_s=0.2
    )
    async with running_edge(settings, image) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/v1/studies/s1", headers=auth)
    assert (response.status_code, response.json()["code"]) == (504, 4)


async def test_metrics_count_requests_by_route_and_status(
    image: DescriptorImage,
    upstreams: dict[str, str],
    authz: AuthzPeer,
    auth: dict[str, str],
    tmp_path: Path,
) -> None:
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    ready = tmp_path / "edge.json"
    settings = EdgeSettings(
        upstreams=upstreams, authz_addr=authz.address, ready_file=ready, grace_period_s=1
    )
    task = asyncio.create_task(serve_edge(settings, image=image, stop=stop, started=started))
    try:
        url = await started
        metrics = json.loads(ready.read_text())["metrics"]
        assert json.loads(ready.read_text())["http"] == url

        def count(status: str) -> float:
            with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as response:
                text = response.read().decode()
            prefix = (
                'edge_requests_total{protocol="rest",'
                f'route="medmesh.ingest.v1.IngestService/GetStudy",status="{status}"}} '
            )
            line = next((x for x in text.splitlines() if x.startswith(prefix)), prefix + "0")
            return float(line.rsplit(" ", 1)[1])

        ok, denied = await asyncio.to_thread(count, "200"), await asyncio.to_thread(count, "401")
        async with httpx.AsyncClient(base_url=url) as client:
            await client.get("/v1/studies/s1", headers=auth)
            await client.get("/v1/studies/s1")
        assert await asyncio.to_thread(count, "200") == ok + 1
        assert await asyncio.to_thread(count, "401") == denied + 1
    finally:
        stop.set()
        await task


def test_python_m_medmesh_edge_writes_its_ready_file_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    ready = tmp_path / "edge.json"
    env = {
        **os.environ,
        "MEDMESH_AUTH_ADDR": "127.0.0.1:1",
        "MEDMESH_READY_FILE": str(ready),
        "MEDMESH_EDGE_ADDR": "127.0.0.1:0",
        "MEDMESH_GRACE_PERIOD_S": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "medmesh.edge"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(300):
            if ready.exists() or process.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), process.stdout.read().decode() if process.stdout else ""
        url = json.loads(ready.read_text())["http"]
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            assert json.loads(response.read()) == {"status": "SERVING"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        log = process.stdout.read().decode() if process.stdout else ""
        assert '"event": "edge draining"' in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({}, "MEDMESH_AUTH_ADDR"),
        ({"MEDMESH_AUTH_ADDR": "a:1", "MEDMESH_EDGE_UPSTREAM_TIMEOUT_S": "soon"}, "soon"),
    ],
)
def test_bad_edge_settings_are_refused_naming_the_variable(
    environ: dict[str, str], fragment: str
) -> None:
    with pytest.raises(SettingsError, match=fragment):
        EdgeSettings.from_env(environ)
