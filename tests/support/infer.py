"""Helpers of svc_infer's integration tests: the harness around a running service.

Jobs are published here the way svc_ingest's outbox relay publishes them (an InferenceJob
on the clinic's lane `<root>.jobs.infer.image|text.<clinic>`, Msg-Id = job id), with the file
put in the raw bucket first; svc_ingest itself does not run.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cv2
import grpc
import numpy as np
import psycopg
from nats.js import JetStreamContext
from psycopg.rows import dict_row
from redis.asyncio import Redis

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.events.v1 import InferenceJob
from medmesh.client import AsyncStub
from medmesh.jetstream import ProtoMessage, Topology, publish_message
from medmesh.objects import RAW_IMAGES, ObjectStore
from medmesh.settings import Settings
from support.jetstream import published
from support.tokens import TokenFactory

CLINIC = "clinic-a"
OTHER_CLINIC = "clinic-b"
CONTENT_TYPES = {
    FileKind.IMAGE_PNG: "image/png",
    FileKind.IMAGE_JPEG: "image/jpeg",
    FileKind.IMAGE_DICOM: "application/dicom",
    FileKind.TEXT_NOTE: "text/plain; charset=utf-8",
}


def png_bytes(seed: int = 0, size: int = 300) -> bytes:
    """A gray radiograph-like PNG: a smooth gradient with a bright disc."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 180, size, dtype=np.float32)
    image = np.tile(ramp, (size, 1))
    centre = rng.integers(size // 4, 3 * size // 4, 2)
    cv2.circle(image, (int(centre[0]), int(centre[1])), size // 8, 255.0, -1)
    ok, buffer = cv2.imencode(".png", image.astype(np.uint8))
    assert ok
    return buffer.tobytes()


@dataclass
class InferHarness:
    """The running service and handles on everything it touches."""

    settings: Settings
    topology: Topology
    channel: grpc.aio.Channel
    inference: AsyncStub
    registry: AsyncStub
    js: JetStreamContext
    objects: ObjectStore
    redis: Redis
    database_url: str
    tokens: TokenFactory
    ready: dict[str, Any] = field(default_factory=dict)

    def metadata(self, *, clinic_id: str = CLINIC, roles: tuple[str, ...] = ("clinician",)) -> Any:
        """Call metadata with a fresh token."""
        return self.tokens.metadata_for(clinic_id=clinic_id, roles=list(roles))

    def admin(self, clinic_id: str = CLINIC) -> Any:
        """Call metadata of an admin of `clinic_id`."""
        return self.metadata(clinic_id=clinic_id, roles=("admin",))

    async def publish_job(
        self,
        data: bytes,
        kind: FileKind,
        *,
        study_id: str | None = None,
        file_id: str | None = None,
        clinic_id: str = CLINIC,
        study_file_count: int = 1,
        sha256: str | None = None,
        job_id: str | None = None,
        upload: bool = True,
    ) -> InferenceJob:
        """Store `data` in the raw bucket (like ingest does) and enqueue its job."""
        study_id = study_id or str(uuid.uuid4())
        file_id = file_id or str(uuid.uuid4())
        key = f"{clinic_id}/{study_id}/{file_id}"
        if upload:
            await self.objects.put_bytes(RAW_IMAGES, key, data, content_type=CONTENT_TYPES[kind])
        job = InferenceJob(
            job_id=job_id or str(uuid.uuid4()),
            clinic_id=clinic_id,
            study_id=study_id,
            file_id=file_id,
            kind=kind,
            bucket=RAW_IMAGES,
            object_key=key,
            content_type=CONTENT_TYPES[kind],
            sha256=hashlib.sha256(data).hexdigest() if sha256 is None else sha256,
            enqueue_time=datetime.now(UTC),
            study_file_count=study_file_count,
        )
        await self.publish(job)
        return job

    async def publish(self, job: InferenceJob, *, msg_id: str | None = None) -> None:
        """Put an InferenceJob on its subject (image or text by kind)."""
        subject = (
            self.topology.infer_text_subject
            if job.kind == FileKind.TEXT_NOTE
            else self.topology.infer_image_subject
        )
        subject = self.topology.publish_subject(subject, job.clinic_id)  # the clinic's lane
        await publish_message(self.js, subject, job, msg_id=msg_id or job.job_id)

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows of a query against the service's database."""
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, row_factory=dict_row
        ) as conn:
            cur = await conn.execute(sql, params)  # type: ignore[arg-type]
            return await cur.fetchall()

    async def wait_for_rows(
        self, sql: str, params: tuple[Any, ...] = (), *, count: int = 1, timeout_s: float = 180
    ) -> list[dict[str, Any]]:
        """Poll `sql` until it returns at least `count` rows."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            rows = await self.query(sql, params)
            if len(rows) >= count:
                return rows
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {count} rows of: {sql} {params}")
            await asyncio.sleep(0.2)

    async def wait_for_result(self, file_id: str, timeout_s: float = 180) -> dict[str, Any]:
        """The result row of a file, once the worker has stored it."""
        rows = await self.wait_for_rows(
            "SELECT * FROM infer.results WHERE file_id = %s", (file_id,), timeout_s=timeout_s
        )
        return rows[0]

    async def messages(
        self, subject: str, cls: type[ProtoMessage], *, count: int = 1, timeout_s: float = 30
    ) -> list[Any]:
        """Every message on `subject` so far (at least `count`), decoded as `cls`."""
        return await published(self.js, subject, cls, count=count, timeout_s=timeout_s)


async def wait_until_consumed(infer: InferHarness, durable: str, timeout_s: float = 120) -> None:
    """Until the consumer and its clinic lanes (`<durable>_lane_<clinic>`, medmesh.lanes) have
    no pending and no unacknowledged message."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        infos = await infer.js.consumers_info(infer.topology.jobs_stream)
        mine = [i for i in infos if i.name == durable or i.name.startswith(f"{durable}_lane_")]
        if mine and all(i.num_pending == 0 and i.num_ack_pending == 0 for i in mine):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{durable} did not drain")
