"""schemathesis over `medmesh up` (the real services, PostgreSQL, Redis, NATS, S3 and the model
server behind the embedded edge), signed in as the bootstrap admin: no request it generates
from /openapi.json gets a 5xx. Found what the scripted upstreams could not: an integer query
value too large for its field reached svc_infer as a varint it could not decode (a 500)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support import fuzz
from support.stack import running_stack

from medmesh.contract import DescriptorImage
from medmesh.edge.routes import RouteTable

ADMIN = "admin@demo-clinic.example"
# Fewer examples than against the scripted edge: every request here reaches PostgreSQL.
MAX_EXAMPLES = 5
FUZZ_TIMEOUT_S = 300


def test_schemathesis_finds_no_server_error_through_the_whole_stack(
    tmp_path: Path, model_base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # svc_auth's per-user and per-IP limits would answer most of the run 429: lifted here.
    monkeypatch.setenv("MEDMESH_AUTH_RATE_LIMIT_USER", "1000000/60")
    monkeypatch.setenv("MEDMESH_AUTH_RATE_LIMIT_IP", "1000000/60")
    with running_stack(tmp_path, model_base_dir) as stack:
        edge = stack.status["edge"]
        password = (stack.data_dir / "secrets" / "admin-password").read_text().strip()
        login = httpx.post(
            f"{edge}/v1/auth:login", json={"email": ADMIN, "password": password}, timeout=30
        )
        assert login.status_code == 200, login.text
        run = fuzz.fuzz(
            edge,
            login.json()["accessToken"],
            tmp_path,
            max_examples=MAX_EXAMPLES,
            timeout_s=FUZZ_TIMEOUT_S,
        )
    assert run.server_errors() == {}, run.output[-6000:]
    assert run.returncode == 0, run.output[-6000:]
    # Every REST route was exercised (most requests are refused as invalid by the services:
    # random names are no study's; the no-5xx property is what this run checks).
    assert len(run.statuses) == len(RouteTable(DescriptorImage()).rest)
