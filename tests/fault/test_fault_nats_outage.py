"""NATS stopped while clinics keep uploading and svc_infer (a real process) keeps consuming:
every upload is accepted during the outage (the transactional outbox holds the jobs), and
once NATS is back every file gets exactly one result; the worker reconnects by itself.

CI stops NATS for 10 s; MEDMESH_FAULT_FULL=1 for the issue's 30 s."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from fault_stack import FaultStack, full_run, infer_env, wait_for_count
from support.infer import png_bytes
from support.serving import served
from support.tokens import TokenFactory

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.ingest.v1 import (
    CreateStudyRequest,
    CreateTextNoteRequest,
    UploadFileMetadata,
    UploadFileRequest,
)
from medmesh.client import AsyncStub
from medmesh.contract import DescriptorImage
from medmesh.launcher import NatsServer
from medmesh.migrate import service_migrations
from medmesh.outbox import RelayOptions
from medmesh.settings import Settings
from svc_ingest.app import INGEST_SERVICE, build

CLINIC = "clinic-a"
RESULTS_SQL = "SELECT count(*) FROM infer.results"


class RestartableNats(NatsServer):
    """nats-server that comes back on the same port with the same JetStream store."""

    def allocate_ports(self) -> None:
        """Keep the first ports on restarts (clients reconnect to the same URL)."""
        if not self.port:
            super().allocate_ports()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[RestartableNats]:
    """A NATS server of this test's own, so it can stop and start it."""
    server = RestartableNats(tmp_path / "nats-data")
    server.start()
    yield server
    server.stop()


@asynccontextmanager
async def running_ingest(
    stack: FaultStack, nats_url: str, tokens: TokenFactory
) -> AsyncIterator[AsyncStub]:
    """svc_ingest in this process (tokens from the test key) on the test's NATS."""
    env = stack.base_env
    settings = Settings(
        service="ingest",
        ready_file=stack.tmp_path / "ingest.ready.json",
        metrics_addr="",
        postgres_url=env["MEDMESH_POSTGRES_URL"],
        nats_url=nats_url,
        s3_url=env["MEDMESH_S3_URL"],
        subject_root=stack.prefix,
        stream_prefix=stack.prefix.upper(),
        s3_bucket_prefix=env["MEDMESH_S3_BUCKET_PREFIX"],
        grace_period_s=1,
    )

    async def setup(s: Settings, exit_stack: AsyncExitStack) -> Any:
        options = RelayOptions(poll_interval_s=0.5, backoff_max_s=1.0)
        return await build(s, exit_stack, verifier=tokens.verifier(), relay_options=options)

    image = DescriptorImage()
    migrations = service_migrations("ingest")
    async with (
        served(settings, setup, migrations=migrations, image=image) as ready,
        grpc.aio.insecure_channel(ready["grpc"]) as channel,
    ):
        yield AsyncStub(channel, INGEST_SERVICE, image)


class Clinic:
    """A clinician uploading: one study per file, notes and now and then a PNG."""

    def __init__(self, stub: AsyncStub, tokens: TokenFactory) -> None:
        self._stub = stub
        self._tokens = tokens
        self.file_ids: list[str] = []
        self.latencies_s: list[float] = []

    def _auth(self) -> Any:
        return self._tokens.metadata_for(user_id="u-1", clinic_id=CLINIC, roles=["clinician"])

    async def upload(self, n: int) -> None:
        """One new study with one file (every 5th a PNG over the UploadFile stream)."""
        began = time.monotonic()
        study = (
            await self._stub.create_study(
                CreateStudyRequest(patient_ref=f"P-{n:04d}"), metadata=self._auth()
            )
        ).study
        if n % 5 == 4:
            data = png_bytes(n)
            meta = UploadFileMetadata(
                parent=study.name,
                kind=FileKind.IMAGE_PNG,
                file_name=f"chest-{n}.png",
                content_type="image/png",
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            )

            async def messages() -> AsyncIterator[UploadFileRequest]:
                yield UploadFileRequest(metadata=meta)
                yield UploadFileRequest(chunk=data)

            response = await self._stub.upload_file(messages(), metadata=self._auth())
        else:
            response = await self._stub.create_text_note(
                CreateTextNoteRequest(parent=study.name, text=f"Note {n}: cough and fever."),
                metadata=self._auth(),
            )
        assert response.file is not None
        self.file_ids.append(response.file.file_id)
        self.latencies_s.append(time.monotonic() - began)


async def test_uploads_continue_through_a_nats_outage_and_every_job_is_processed_after(
    fault_stack: FaultStack,
    own_nats: RestartableNats,
    tokens: TokenFactory,
    model_server_address: str,
) -> None:
    outage_s = 30.0 if full_run() else 10.0
    worker = fault_stack.service(
        "infer",
        "infer",
        MEDMESH_NATS_URL=own_nats.url,
        **infer_env(fault_stack, model_server_address),
    )
    await worker.start()
    async with running_ingest(fault_stack, own_nats.url, tokens) as stub:
        clinic = Clinic(stub, tokens)
        for n in range(5):
            await clinic.upload(n)
        await wait_for_count(fault_stack, RESULTS_SQL, 5, [worker])

        own_nats.stop()
        began = time.monotonic()
        n = 5
        while time.monotonic() - began < outage_s:
            await clinic.upload(n)  # every call must succeed: NATS is not on the upload path
            n += 1
            await asyncio.sleep(0.2)
        during = n - 5
        pending = await fault_stack.count(
            "SELECT count(*) FROM ingest.outbox WHERE published_at IS NULL"
        )
        own_nats.start()
        back = time.monotonic()

        await wait_for_count(fault_stack, RESULTS_SQL, n, [worker])
        caught_up_s = time.monotonic() - back

    rows = await fault_stack.query(
        "SELECT file_id, count(*) AS n FROM infer.results GROUP BY file_id"
    )
    assert {r["file_id"]: r["n"] for r in rows} == {f: 1 for f in clinic.file_ids}
    assert pending >= during  # the jobs of the outage waited in the outbox, not in memory
    assert await fault_stack.count("SELECT count(*) FROM infer.dead_letters") == 0
    print(  # noqa: T201 - the measured numbers, for the README (pytest -s)
        f"\nfault NATS outage {outage_s:.0f} s: {during} uploads accepted during it "
        f"(slowest call {max(clinic.latencies_s):.2f} s), {n} files, all results "
        f"{caught_up_s:.1f} s after NATS returned"
    )
