"""Handles of the fault suite: service processes started, killed and stopped by the tests,
and the environment they share."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg
from psycopg.rows import dict_row
from support.infer import png_bytes
from support.serving import served
from support.tokens import TokenFactory

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.events.v1 import InferenceJob
from gen.medmesh.ingest.v1 import (
    CreateStudyRequest,
    CreateTextNoteRequest,
    UploadFileMetadata,
    UploadFileRequest,
)
from medmesh.client import AsyncStub
from medmesh.contract import DescriptorImage
from medmesh.jetstream import Topology, publish_message
from medmesh.launcher.postgres import PostgresServer
from medmesh.launcher.servers import RedisServer, S3Server
from medmesh.migrate import service_migrations
from medmesh.objects import RAW_IMAGES, ObjectStore
from medmesh.outbox import RelayOptions
from medmesh.runtime import ServiceParts
from medmesh.settings import Settings
from svc_infer import app as infer_app
from svc_infer.service import INFERENCE_SERVICE
from svc_ingest.app import INGEST_SERVICE, build

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0
PROGRESS_TIMEOUT_S = 180.0
CLINIC = "clinic-a"
NOTE = (
    "Patient {n} presents with a productive cough and fever for three days. "
    "Crackles over the right lower lobe. Chest X-ray requested."
)


@dataclass
class ServiceProcess:
    """One `python -m <module>` process with its log file."""

    module: str
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    ready: dict[str, str] = field(default_factory=dict)
    """What the running process wrote to its ready file (its gRPC and metrics addresses)."""
    args: list[str] = field(default_factory=list)
    """Command-line arguments after `-m <module>`."""

    async def start(self) -> float:
        """Start it and wait until it wrote its ready file (it is SERVING); the seconds that
        took."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        ready = Path(self.env["MEDMESH_READY_FILE"])
        ready.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                *self.args,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        while not ready.exists():
            if self.process.returncode is not None:
                raise AssertionError(f"{self.module} exited: see {self.log_path}")
            if loop.time() - began > START_TIMEOUT_S:
                raise AssertionError(f"{self.module} not ready in {START_TIMEOUT_S} s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)  # the file is written in one go, but not atomically
        self.ready = json.loads(ready.read_text())
        return loop.time() - began

    async def metric(self, name: str) -> float:
        """The sum of a Prometheus metric's samples on the running process's /metrics."""
        url = f"http://{self.ready['metrics']}/metrics"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()

        total = 0.0
        for line in (await asyncio.to_thread(scrape)).splitlines():
            if line.startswith((f"{name}{{", f"{name} ")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.returncode is None

    async def kill9(self) -> None:
        """SIGKILL: no grace, nothing settled, nothing flushed."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 30 s); a no-op when it is not running."""
        if self.process is None or not self.running:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                await self.process.wait()
        except TimeoutError:
            await self.kill9()


class KeepsItsPort:
    """A dependency server that comes back on the same port with the same data when it is
    stopped and started again (clients reconnect to the same URL)."""

    port: int

    def allocate_ports(self) -> None:
        """Keep the first port on restarts."""
        if not self.port:
            super().allocate_ports()  # type: ignore[misc]


class RestartablePostgres(KeepsItsPort, PostgresServer):
    """PostgreSQL of a test's own."""


class RestartableRedis(KeepsItsPort, RedisServer):
    """Redis of a test's own (its AOF keeps the data through a stop)."""


class RestartableS3(KeepsItsPort, S3Server):
    """The S3 emulator of a test's own (objects are files in its folder)."""


@dataclass
class FaultStack:
    """The test's names and environment, and the processes it started."""

    tmp_path: Path
    prefix: str
    database_url: str
    base_env: dict[str, str]
    topology: Topology
    processes: list[ServiceProcess] = field(default_factory=list)

    def service(self, service: str, name: str, **extra: str) -> ServiceProcess:
        """A (not yet started) process of `svc_<service>`; `extra` adds variables."""
        env = {
            **self.base_env,
            "MEDMESH_READY_FILE": str(self.tmp_path / f"{name}.ready.json"),
            **extra,
        }
        process = ServiceProcess(f"svc_{service}", env, self.tmp_path / f"{name}.log")
        self.processes.append(process)
        return process

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows of a query against the test's database."""
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, row_factory=dict_row
        ) as conn:
            cur = await conn.execute(sql, params)  # type: ignore[arg-type]
            return await cur.fetchall()

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        """Run a statement against the test's database."""
        async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as c:
            await c.execute(sql, params)  # type: ignore[arg-type]

    async def count(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """The single number a `SELECT count(*) ...` returns (0 before the table exists)."""
        try:
            rows = await self.query(sql, params)
        except psycopg.errors.UndefinedTable:
            return 0
        return int(next(iter(rows[0].values())))


def full_run() -> bool:
    """The issue's sizes (200 jobs, 100 studies, a 30 s NATS outage; what CI runs) unless
    MEDMESH_FAULT_SMALL=1 (60 jobs, 30 studies, 10 s) for a quicker local run."""
    return os.environ.get("MEDMESH_FAULT_SMALL", "") != "1"


def infer_env(stack: FaultStack, model_server_address: str) -> dict[str, str]:
    """svc_infer's variables for the fault tests."""
    return {
        "MEDMESH_INFER_TF_SERVING_ADDR": model_server_address,
        "MEDMESH_INFER_BATCH_SIZE": "8",
        "MEDMESH_INFER_RETRY_BACKOFF_S": "0.5,1",
        "MEDMESH_JOB_ACK_WAIT_S": "2",
    }


async def enqueue_notes(
    stack: FaultStack, js: Any, objects: ObjectStore, count: int, *, with_studies: bool = False
) -> list[InferenceJob]:
    """`count` notes in the raw bucket, each with its text job (one study per note), the
    way svc_ingest's relay publishes them; `with_studies` also writes the study and file
    rows svc_ingest would have (svc_report reads them)."""
    jobs = []
    for n in range(count):
        data = NOTE.format(n=n).encode()
        study_id, file_id = str(uuid.uuid4()), str(uuid.uuid4())
        key = f"{CLINIC}/{study_id}/{file_id}"
        await objects.put_bytes(RAW_IMAGES, key, data, content_type="text/plain; charset=utf-8")
        if with_studies:
            await stack.execute(
                "INSERT INTO ingest.studies (study_id, clinic_id, patient_ref, description,"
                " status, creator, create_time, update_time)"
                " VALUES (%s, %s, %s, 'fault suite', 4, 'users/u1', now(), now())",
                (study_id, CLINIC, f"PAT-{n:04d}"),
            )
            await stack.execute(
                "INSERT INTO ingest.medical_data (file_id, study_id, clinic_id, kind, file_name,"
                " content_type, size_bytes, sha256, object_key, status, create_time,"
                " update_time) VALUES (%s, %s, %s, %s, 'note.txt', 'text/plain; charset=utf-8',"
                " %s, %s, %s, 5, now(), now())",
                (
                    file_id,
                    study_id,
                    CLINIC,
                    int(FileKind.TEXT_NOTE),
                    len(data),
                    hashlib.sha256(data).hexdigest(),
                    key,
                ),
            )
        job = InferenceJob(
            job_id=str(uuid.uuid4()),
            clinic_id=CLINIC,
            study_id=study_id,
            file_id=file_id,
            kind=FileKind.TEXT_NOTE,
            bucket=RAW_IMAGES,
            object_key=key,
            content_type="text/plain; charset=utf-8",
            sha256=hashlib.sha256(data).hexdigest(),
            enqueue_time=datetime.now(UTC),
            study_file_count=1,
        )
        await publish_message(js, stack.topology.infer_text_subject, job, msg_id=job.job_id)
        jobs.append(job)
    return jobs


async def wait_for_count(
    stack: FaultStack, sql: str, at_least: int, processes: list[ServiceProcess]
) -> int:
    """Poll `SELECT count(*) ...` until it is at least `at_least`; the count. Fails when
    one of `processes` dies on its own, or after PROGRESS_TIMEOUT_S."""
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    while (done := await stack.count(sql)) < at_least:
        for process in processes:
            assert process.running, f"{process.module} died on its own: see {process.log_path}"
        assert time.monotonic() < deadline, f"stuck at {done} of {at_least}: {sql}"
        await asyncio.sleep(0.05)
    return done


@asynccontextmanager
async def running_ingest(
    stack: FaultStack,
    tokens: TokenFactory,
    *,
    nats_url: str = "",
    postgres_url: str = "",
    s3_url: str = "",
) -> AsyncIterator[AsyncStub]:
    """svc_ingest in this process (tokens from the test key), on the test's dependencies or
    the given NATS / PostgreSQL / S3."""
    env = stack.base_env
    settings = Settings(
        service="ingest",
        ready_file=stack.tmp_path / "ingest.ready.json",
        metrics_addr="",
        postgres_url=postgres_url or env["MEDMESH_POSTGRES_URL"],
        nats_url=nats_url or env["MEDMESH_NATS_URL"],
        s3_url=s3_url or env["MEDMESH_S3_URL"],
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


@asynccontextmanager
async def running_infer(
    stack: FaultStack,
    tokens: TokenFactory,
    extra: dict[str, str],
    *,
    job_max_attempts: int = Settings.job_max_attempts,
    **urls: str,
) -> AsyncIterator[tuple[AsyncStub, Settings]]:
    """svc_infer (RPCs and workers) in this process, tokens from the test key, on the test's
    dependencies or those given (`redis_url=`, `s3_url=`, ...); `extra` adds MEDMESH_INFER_*."""
    env = stack.base_env
    settings = Settings(
        service="infer",
        ready_file=stack.tmp_path / "infer-inprocess.ready.json",
        metrics_addr="",
        postgres_url=urls.get("postgres_url", env["MEDMESH_POSTGRES_URL"]),
        redis_url=urls.get("redis_url", env["MEDMESH_REDIS_URL"]),
        nats_url=urls.get("nats_url", env["MEDMESH_NATS_URL"]),
        s3_url=urls.get("s3_url", env["MEDMESH_S3_URL"]),
        subject_root=stack.prefix,
        stream_prefix=stack.prefix.upper(),
        s3_bucket_prefix=env["MEDMESH_S3_BUCKET_PREFIX"],
        grace_period_s=1,
        job_max_attempts=job_max_attempts,
        extra=extra,
    )

    async def setup(s: Settings, exit_stack: AsyncExitStack) -> ServiceParts:
        parts = await infer_app.setup(s, exit_stack)
        parts.verifier = tokens.verifier()
        return parts

    image = DescriptorImage()
    async with (
        served(settings, setup, migrations=service_migrations("infer"), image=image) as ready,
        grpc.aio.insecure_channel(ready["grpc"]) as channel,
    ):
        yield AsyncStub(channel, INFERENCE_SERVICE, image), settings


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
