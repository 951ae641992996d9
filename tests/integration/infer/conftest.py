"""svc_infer under test: the real service in-process (workers included) against the session's
PostgreSQL, Redis, NATS JetStream, S3 and model server, with this test's own names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest
from support.infer import CLINIC, InferHarness
from support.models import model_base_dir, model_server_address  # noqa: F401 - fixtures
from support.serving import clients, served
from support.tokens import TokenFactory

from medmesh.client import AsyncStub
from medmesh.contract import DescriptorImage
from medmesh.jetstream import Topology
from medmesh.migrate import service_migrations
from medmesh.runtime import ServiceParts
from medmesh.settings import Settings
from svc_infer import app
from svc_infer.service import INFERENCE_SERVICE, REGISTRY_SERVICE


@pytest.fixture
def infer_extra(model_server_address: str) -> dict[str, str]:  # noqa: F811 - fixture
    """MEDMESH_INFER_* settings of the service under test (tests may override)."""
    return {
        "MEDMESH_INFER_TF_SERVING_ADDR": model_server_address,
        "MEDMESH_INFER_RETRY_BACKOFF_S": "0.2,0.4",
        "MEDMESH_INFER_BATCH_WAIT_MS": "50",
        "MEDMESH_INFER_PREDICT_TIMEOUT_S": "120",
    }


@pytest.fixture
async def infer(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    nats_url: str,
    s3_url: str,
    name_prefix: str,
    tokens: TokenFactory,
    infer_extra: Mapping[str, str],
) -> AsyncIterator[InferHarness]:
    """svc_infer serving on a free port with its workers, and handles for the test."""
    ready_file = tmp_path / "ready.json"
    settings = Settings(
        service="infer",
        postgres_url=database_url,
        redis_url=redis_url,
        nats_url=nats_url,
        s3_url=s3_url,
        s3_bucket_prefix=f"{name_prefix}-",
        subject_root=name_prefix,
        stream_prefix=name_prefix.upper(),
        ready_file=ready_file,
        grace_period_s=1,
        operator_clinic_id=CLINIC,  # clinic-a's admins run the model registry
        extra=dict(infer_extra),
    )

    async def setup(s: Settings, stack: AsyncExitStack) -> ServiceParts:
        parts = await app.setup(s, stack)
        parts.verifier = tokens.verifier()
        return parts

    async with served(settings, setup, migrations=service_migrations("infer")) as ready:
        image = DescriptorImage()
        async with (
            clients(settings, "infer-test") as used,
            grpc.aio.insecure_channel(ready["grpc"]) as channel,
        ):
            yield InferHarness(
                settings=settings,
                topology=Topology(subject_root=name_prefix, stream_prefix=name_prefix.upper()),
                channel=channel,
                inference=AsyncStub(channel, INFERENCE_SERVICE, image),
                registry=AsyncStub(channel, REGISTRY_SERVICE, image),
                js=used.js,
                objects=used.objects,
                redis=used.redis,
                database_url=database_url,
                tokens=tokens,
                ready=ready,
            )
