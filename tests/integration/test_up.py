"""`medmesh up` as a user runs it: embedded dependencies, migrated schemas, four services that
answer health and reflection, addresses printed and written, Ctrl-C stops everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from support.stack import running_stack

SERVICES = {
    "auth": ["medmesh.auth.v1.AuthService"],
    "ingest": ["medmesh.ingest.v1.IngestService"],
    "infer": ["medmesh.infer.v1.InferenceService", "medmesh.infer.v1.ModelRegistryService"],
    "report": ["medmesh.report.v1.ReportService"],
}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, model_base_dir: Path
) -> Iterator[tuple[subprocess.Popen[str], dict[str, str], list[str]]]:
    """`medmesh up` as on a fresh machine: the process, its status JSON, what it printed.
    Shared by this module's tests; the Ctrl-C test runs last."""
    with running_stack(tmp_path_factory.mktemp("up"), model_base_dir) as running:
        yield running.process, running.status, running.printed


def _printed_url(printed: list[str], name: str) -> str:
    return next(line for line in printed if line.startswith(f"{name} ")).split(" ", 1)[1]


def test_up_migrates_every_schema_before_serving(stack) -> None:
    _process, _status, printed = stack
    with psycopg.connect(_printed_url(printed, "postgres")) as conn:
        for schema in [*SERVICES, "audit"]:
            applied = conn.execute(f"SELECT count(*) FROM {schema}._yoyo_migration").fetchone()
            assert applied is not None
            assert applied[0] >= 1, schema


def test_up_runs_each_service_as_its_own_database_role_and_migrates_as_the_owner(stack) -> None:
    _process, _status, printed = stack
    with psycopg.connect(_printed_url(printed, "postgres")) as conn:
        sessions = conn.execute(
            "SELECT DISTINCT application_name, usename FROM pg_stat_activity"
            " WHERE application_name LIKE 'medmesh-%%'"
        ).fetchall()
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = ANY(%s)",
            ([*SERVICES, "audit"],),
        ).fetchall()
        superusers = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolsuper AND rolname LIKE 'medmesh_%%'"
        ).fetchall()
    by_service = {name.removeprefix("medmesh-"): user for name, user in sessions}
    assert {s: by_service.get(s) for s in SERVICES} == {s: f"medmesh_{s}" for s in SERVICES}
    assert owners == [("medmesh_migrator",)]
    assert superusers == []


@pytest.mark.parametrize(
    ("service", "method"),
    [
        ("ingest", "medmesh.ingest.v1.IngestService/ListStudies"),
        ("infer", "medmesh.infer.v1.InferenceService/ListDeadLetters"),
        ("report", "medmesh.report.v1.ReportService/ListReports"),
    ],
)
def test_every_service_started_by_up_refuses_a_call_without_a_token(
    stack, service: str, method: str
) -> None:
    _process, status, _printed = stack
    result = subprocess.run(
        [sys.executable, "-m", "medmesh.cli", "call", status[service], method, "{}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "ERROR: UNAUTHENTICATED: a valid access token is required" in result.stderr


def test_up_serves_the_edge_in_front_of_the_services(stack) -> None:
    _process, status, printed = stack
    assert f"edge {status['edge']}" in printed
    with urllib.request.urlopen(f"{status['edge']}/healthz", timeout=10) as response:
        assert json.loads(response.read()) == {"status": "SERVING"}
    # Through the edge to svc_auth's GetJwks: REST transcoding against the real service.
    with urllib.request.urlopen(f"{status['edge']}/.well-known/jwks.json", timeout=10) as reply:
        assert reply.headers["content-type"] == "application/json"
        assert isinstance(json.loads(reply.read())["keys"], list)


def _child_pid(parent: int, module: str) -> int:
    """The pid of `medmesh up`'s child running `python -m module`."""
    for child in psutil.Process(parent).children():
        if child.cmdline()[1:3] == ["-m", module]:
            return child.pid
    raise AssertionError(f"no child runs {module}")


def test_a_service_killed_under_up_is_started_again_on_the_same_address(stack) -> None:
    process, status, printed = stack
    old_pid = _child_pid(process.pid, "svc_report")
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while True:  # polled until up has started it again: a bound, not a timing assertion
        try:
            with grpc.insecure_channel(status["report"]) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="medmesh.report.v1.ReportService"),
                    timeout=2,
                )
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                break
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, "svc_report was not started again"
        time.sleep(0.5)
    assert _child_pid(process.pid, "svc_report") != old_pid
    assert process.poll() is None
    # The edge's upstream address is still right: a call through it reaches the new process.
    admin = next(line for line in printed if line.startswith("admin "))
    email, password_file = admin.split()[1], admin.split("password in ")[1].rstrip(")")
    password = Path(password_file).read_text().strip()
    login = urllib.request.Request(
        f"{status['edge']}/v1/auth:login",
        data=json.dumps({"email": email, "password": password}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(login, timeout=10) as reply:
        token = json.loads(reply.read())["accessToken"]
    listed = urllib.request.Request(
        f"{status['edge']}/v1/reports", headers={"authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(listed, timeout=10) as reply:
        assert reply.status == 200
        assert isinstance(json.loads(reply.read()), dict)


def test_up_serves_every_service_with_health_and_reflection_and_stops_on_ctrl_c(stack) -> None:
    process, status, printed = stack
    assert set(status) == {*SERVICES, "edge"}
    for name, services in SERVICES.items():
        assert f"{name} grpc {status[name]}" in printed
        with grpc.insecure_channel(status[name]) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ["", *services]:
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            listed = set(ProtoReflectionDescriptorDatabase(channel).get_services())
            assert set(services) <= listed

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(_printed_url(printed, "postgres"), connect_timeout=2)
    with pytest.raises(grpc.RpcError), grpc.insecure_channel(status["auth"]) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
