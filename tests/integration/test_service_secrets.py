"""A service that keeps secrets at rest (svc_auth: signing keys; svc_report: MIS tokens) is
started as a process without its key-encryption key: it refuses, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("service", "variable"),
    [
        ("svc_auth", "MEDMESH_AUTH_KEY_ENCRYPTION_KEY"),
        ("svc_report", "MEDMESH_REPORT_KEY_ENCRYPTION_KEY"),
    ],
)
def test_a_service_started_without_its_key_encryption_key_exits_naming_the_variable(
    service: str, variable: str, database_url: str, redis_url: str, nats_url: str, s3_url: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDMESH_")}
    env.update(
        {
            "MEDMESH_POSTGRES_URL": database_url,
            "MEDMESH_REDIS_URL": redis_url,
            "MEDMESH_NATS_URL": nats_url,
            "MEDMESH_S3_URL": s3_url,
            "MEDMESH_AUTH_ADDR": "127.0.0.1:9",
            "MEDMESH_METRICS_ADDR": "",
        }
    )

    done = subprocess.run(
        [sys.executable, "-m", service],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"{service} cannot start: {variable} is not set"), done.stderr
    assert "no default key-encryption key" in last_line
    assert "Traceback" not in done.stderr
