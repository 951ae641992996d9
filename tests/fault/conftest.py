"""The fault suite: services run as real processes (`python -m svc_infer`, `python -m
svc_report`) against the session's PostgreSQL, Redis, NATS and S3, and are killed with
SIGKILL mid-work by the tests. Each test gets a fresh database and its own subject root, so
the processes of one test never see another's jobs."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from fault_stack import FaultStack
from support.models import model_base_dir, model_server_address  # noqa: F401 - fixtures

from medmesh.jetstream import Topology, connect_nats
from medmesh.objects import ObjectStore
from svc_infer.models import quiet_tensorflow

# Before the session's model server imports TensorFlow: hides the harmless cuInit error.
quiet_tensorflow()


@pytest.fixture
async def fault_stack(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    nats_url: str,
    s3_url: str,
    name_prefix: str,
) -> AsyncIterator[FaultStack]:
    """The environment every service process of this test shares; every process it started
    is stopped afterwards."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDMESH_", "OTEL_"))}
    base_env.update(
        {
            "MEDMESH_POSTGRES_URL": database_url,
            "MEDMESH_REDIS_URL": redis_url,
            "MEDMESH_NATS_URL": nats_url,
            "MEDMESH_S3_URL": s3_url,
            "MEDMESH_S3_BUCKET_PREFIX": f"{name_prefix}-",
            "MEDMESH_SUBJECT_ROOT": name_prefix,
            "MEDMESH_STREAM_PREFIX": name_prefix.upper(),
            "MEDMESH_GRPC_ADDR": "127.0.0.1:0",
            "MEDMESH_METRICS_ADDR": "",
            # Jobs only: no RPC is called, the JWKS is fetched lazily and never here.
            "MEDMESH_AUTH_ADDR": "127.0.0.1:9",
            "MEDMESH_GRACE_PERIOD_S": "1",
            "MEDMESH_LOG_LEVEL": "warning",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            # Services that keep secrets refuse to start without their key-encryption key.
            "MEDMESH_AUTH_KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "MEDMESH_REPORT_KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        }
    )
    stack = FaultStack(
        tmp_path,
        name_prefix,
        database_url,
        base_env,
        Topology(subject_root=name_prefix, stream_prefix=name_prefix.upper()),
    )
    try:
        yield stack
    finally:
        for process in stack.processes:
            await process.stop()


@pytest.fixture
async def fault_objects(s3_url: str, name_prefix: str) -> AsyncIterator[ObjectStore]:
    """The test's S3 buckets (the services' prefix), created."""
    objects = ObjectStore(s3_url, bucket_prefix=f"{name_prefix}-")
    await objects.ensure_buckets()
    try:
        yield objects
    finally:
        objects.close()


@pytest.fixture
async def fault_js(nats_url: str) -> AsyncIterator[Any]:
    """The test's own JetStream context."""
    nc, js = await connect_nats(nats_url, name="fault-test")
    try:
        yield js
    finally:
        await nc.drain()
