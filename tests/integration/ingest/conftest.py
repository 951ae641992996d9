"""Fixtures for svc_ingest: the real service in this process (real PostgreSQL, S3, NATS
JetStream from the session fixtures), a fresh database and name prefix per test, tokens from
the test key, and helpers to look at what the service left in the bucket, the tables and the
streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import psycopg
import pytest
from nats.js.errors import NotFoundError
from support.serving import served
from support.tokens import TokenFactory

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.events.v1 import InferenceJob
from gen.medmesh.ingest.v1 import (
    CreateStudyRequest,
    Study,
    UploadFileMetadata,
    UploadFileRequest,
    UploadFileResponse,
)
from medmesh.client import AsyncStub
from medmesh.contract import DescriptorImage
from medmesh.jetstream import Topology
from medmesh.migrate import service_migrations
from medmesh.objects import RAW_IMAGES, ObjectStore
from medmesh.outbox import RelayOptions
from medmesh.settings import Settings
from svc_ingest.app import INGEST_SERVICE, build
from svc_ingest.config import MIB, IngestConfig

CONTENT_TYPES = {
    FileKind.IMAGE_PNG: "image/png",
    FileKind.IMAGE_JPEG: "image/jpeg",
    FileKind.IMAGE_DICOM: "application/dicom",
    FileKind.TEXT_NOTE: "text/plain; charset=utf-8",
}
Metadata = tuple[tuple[str, str], ...]


@dataclass
class Ingest:
    """A running svc_ingest and ways to look behind it."""

    stub: AsyncStub
    settings: Settings
    config: IngestConfig
    tokens: TokenFactory
    database_url: str
    objects: ObjectStore
    topology: Topology
    s3_data_dir: Path | None = None

    def auth(
        self, clinic: str = "clinic-a", roles: Iterable[str] = ("clinician",), user: str = "u-1"
    ) -> Metadata:
        """Call metadata with a token for `user` in `clinic`."""
        return self.tokens.metadata_for(user_id=user, clinic_id=clinic, roles=list(roles))

    async def create_study(self, clinic: str = "clinic-a", patient_ref: str = "p-001") -> Study:
        """A new study in `clinic`."""
        response = await self.stub.create_study(
            CreateStudyRequest(patient_ref=patient_ref), metadata=self.auth(clinic)
        )
        return response.study

    async def upload(
        self,
        study: Study,
        data: bytes,
        kind: FileKind,
        *,
        chunk_size: int = 256 * 1024,
        clinic: str = "clinic-a",
        **overrides: Any,
    ) -> UploadFileResponse:
        """Stream `data` as one file (metadata fields can be overridden)."""
        meta = {
            "parent": study.name,
            "kind": kind,
            "file_name": "file.bin",
            "content_type": CONTENT_TYPES[kind],
            "size_bytes": len(data),
            **overrides,
        }
        messages = [UploadFileRequest(metadata=UploadFileMetadata(**meta))]
        messages += [
            UploadFileRequest(chunk=data[i : i + chunk_size])
            for i in range(0, len(data), chunk_size)
        ]
        return await self.send(messages, clinic=clinic)

    async def send(
        self, messages: Sequence[UploadFileRequest], *, clinic: str = "clinic-a"
    ) -> UploadFileResponse:
        """An UploadFile stream of exactly `messages`."""

        async def stream() -> AsyncIterator[UploadFileRequest]:
            for message in messages:
                yield message

        return await self.stub.upload_file(stream(), metadata=self.auth(clinic))

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run a query against the service's database (for assertions)."""
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def count(self, table: str) -> int:
        """Rows in `ingest.<table>`."""
        return int(self.rows(f"SELECT count(*) FROM ingest.{table}")[0][0])

    def object_keys(self) -> list[str]:
        """Every object in the raw-images bucket."""
        bucket = self.objects.bucket(RAW_IMAGES)
        return sorted(
            o.object_name or "" for o in self.objects.client.list_objects(bucket, recursive=True)
        )

    def incomplete_uploads(self) -> list[str]:
        """Multipart uploads the S3 server still holds (localbucket keeps them in a folder)."""
        if self.s3_data_dir is None:
            return []
        folder = self.s3_data_dir / ".localbucket-uploads"
        bucket = self.objects.bucket(RAW_IMAGES)
        found = []
        for upload in folder.glob("*/") if folder.is_dir() else []:
            meta = upload / "upload.json"
            info = json.loads(meta.read_text()) if meta.exists() else {}
            if info.get("bucket", bucket) == bucket:
                found.append(upload.name)
        return found

    async def jobs(self, subject: str | None = None) -> list[InferenceJob]:
        """Every inference job on the jobs stream, in order."""
        subjects = (
            {subject}
            if subject
            else {self.topology.infer_image_subject, self.topology.infer_text_subject}
        )
        return [
            InferenceJob.FromString(data)
            for subj, data, _ in await self.stream_messages(self.topology.jobs_stream)
            if self.topology.job_subject_of(subj) in subjects
        ]

    async def stream_messages(self, stream: str) -> list[tuple[str, bytes, dict[str, str]]]:
        """Every message of `stream`: (subject, payload, headers)."""
        nc = await nats.connect(self.settings.nats_url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            found: list[tuple[str, bytes, dict[str, str]]] = []
            if not info.state.messages:
                return found
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(stream, seq)
                except NotFoundError:
                    continue
                found.append((msg.subject, msg.data or b"", dict(msg.headers or {})))
            return found
        finally:
            await nc.close()

    async def eventually(
        self, check: Callable[[], Any], *, timeout_s: float = 15.0, interval_s: float = 0.1
    ) -> Any:
        """Poll `check` (sync or async) until it returns something truthy."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"condition not met within {timeout_s} s: {result!r}")
            await asyncio.sleep(interval_s)


@pytest.fixture(scope="session")
def contract_image() -> DescriptorImage:
    """The contract's descriptor image, loaded once."""
    return DescriptorImage()


@pytest.fixture
def ingest_config() -> IngestConfig:
    """Small limits so that limit cases stay cheap; 5 MiB parts exercise multipart."""
    return IngestConfig(
        max_image_bytes=32 * MIB,
        max_dicom_bytes=32 * MIB,
        max_text_bytes=64 * 1024,
        max_stream_bytes=24 * MIB,
        max_pixels=4_000_000,
        max_decoded_bytes=12 * MIB,
        header_window_bytes=256 * 1024,
        part_size_bytes=5 * MIB,
    )


StartIngest = Callable[..., AbstractAsyncContextManager[Ingest]]


@pytest.fixture
def start_ingest(
    tmp_path: Path,
    database_url: str,
    nats_url: str,
    s3_url: str,
    name_prefix: str,
    tokens: TokenFactory,
    ingest_config: IngestConfig,
    contract_image: DescriptorImage,
) -> StartIngest:
    """Start svc_ingest in this process: `async with start_ingest(nats_url=...) as ingest`."""

    @asynccontextmanager
    async def start(
        *, nats: str | None = None, s3: str | None = None, s3_data_dir: Path | None = None
    ) -> AsyncIterator[Ingest]:
        ready_file = tmp_path / f"ready-{len(list(tmp_path.glob('ready-*')))}.json"
        settings = Settings(
            service="ingest",
            ready_file=ready_file,
            metrics_addr="",
            postgres_url=database_url,
            nats_url=nats or nats_url,
            s3_url=s3 or s3_url,
            subject_root=name_prefix,
            stream_prefix=name_prefix.upper(),
            s3_bucket_prefix=name_prefix + "-",
            grace_period_s=1,
        )

        async def setup(settings: Settings, stack: Any) -> Any:
            return await build(
                settings,
                stack,
                config=ingest_config,
                verifier=tokens.verifier(),
                relay_options=RelayOptions(poll_interval_s=0.5, backoff_max_s=1.0),
            )

        migrations = service_migrations("ingest")
        async with served(settings, setup, migrations=migrations, image=contract_image) as ready:
            objects = ObjectStore(settings.s3_url, bucket_prefix=settings.s3_bucket_prefix)
            try:
                async with grpc.aio.insecure_channel(ready["grpc"]) as channel:
                    yield Ingest(
                        stub=AsyncStub(channel, INGEST_SERVICE, contract_image),
                        settings=settings,
                        config=ingest_config,
                        tokens=tokens,
                        database_url=database_url,
                        objects=objects,
                        topology=Topology(
                            subject_root=settings.subject_root,
                            stream_prefix=settings.stream_prefix,
                        ),
                        s3_data_dir=s3_data_dir,
                    )
            finally:
                objects.close()

    return start


@pytest.fixture
async def ingest(start_ingest: StartIngest) -> AsyncIterator[Ingest]:
    """svc_ingest on the session's dependencies."""
    async with start_ingest() as service:
        yield service
