"""Handles for svc_report tests: the running service, its stub, and helpers that seed the
read models (rows in ingest/infer/auth tables, a cached Result in Redis, a processed image in
S3) the way the owning services would have written them."""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import numpy as np
import psycopg
from nats.js import JetStreamContext
from PIL import Image
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from redis.asyncio import Redis
from support.jetstream import published
from support.tokens import TokenFactory

from gen.medmesh.common.v1 import AnalysisKind, FileKind, LabelScore
from gen.medmesh.events.v1 import StudyResultsReady
from gen.medmesh.infer.v1 import ImageClassification, Result, TextAnalysis, TrafficArm
from gen.medmesh.report.v1 import DownloadReportRequest, ReportStatus
from medmesh.client import AsyncStub
from medmesh.jetstream import ConsumerSpec, ProtoMessage, Topology, publish_message
from medmesh.objects import PROCESSED_IMAGES, ObjectStore

CLINIC = "clinic-a"
OTHER_CLINIC = "clinic-b"
XSS_PATIENT = "<script>alert(1)</script>"


class Mailbox:
    """An aiosmtpd handler that keeps every accepted message in memory."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.raw: list[bytes] = []
        """Each message's bytes as submitted (the `.eml`), in arrival order."""
        self._lock = threading.Lock()

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        """Accept and keep the message."""
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.messages.append(message)  # type: ignore[arg-type]
            self.raw.append(bytes(envelope.content))
        return "250 OK"

    def to(self, recipient: str) -> list[EmailMessage]:
        """Messages addressed to `recipient` so far."""
        with self._lock:
            return [m for m in self.messages if m["To"] == recipient]

    async def wait_for(self, recipient: str, timeout_s: float = 30) -> EmailMessage:
        """The first message to `recipient`, waiting for it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.to(recipient)
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no mail to {recipient} within {timeout_s} s")


@dataclass
class SeededStudy:
    """A study seeded in the read models: an image and a note with one result each."""

    study_id: str
    clinic_id: str
    image_file_id: str
    note_file_id: str
    image_result_id: str
    note_result_id: str
    result_ids: list[str] = field(default_factory=list)


@dataclass
class ReportHarness:
    """The service under test and the test's own clients of its dependencies."""

    report: AsyncStub
    js: JetStreamContext
    topology: Topology
    objects: ObjectStore
    redis: Redis
    database_url: str
    tokens: TokenFactory
    prefix: str

    def metadata(self, *, clinic_id: str = CLINIC, roles: tuple[str, ...] = ("clinician",)) -> Any:
        """Call metadata with a fresh token."""
        return self.tokens.metadata_for(
            user_id=f"user-{clinic_id}-{roles[0]}", clinic_id=clinic_id, roles=roles
        )

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Run SQL against the test database (rows when it returns some)."""
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, row_factory=dict_row
        ) as conn:
            cur = await conn.execute(sql, params)  # type: ignore[arg-type]
            return await cur.fetchall() if cur.description else []

    async def wait_for_rows(
        self, sql: str, params: tuple[Any, ...] = (), *, count: int = 1, timeout_s: float = 60
    ) -> list[dict[str, Any]]:
        """Poll `sql` until it returns at least `count` rows."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = await self.execute(sql, params)
            if len(rows) >= count:
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {count} rows of: {sql} {params}")
            await asyncio.sleep(0.1)

    async def wait_for_report(
        self, study_id: str, *, version: int = 1, status: ReportStatus = ReportStatus.READY
    ) -> dict[str, Any]:
        """The report row of a study's version once it has `status`."""
        rows = await self.wait_for_rows(
            "SELECT * FROM report.reports WHERE study_id = %s AND version = %s AND status = %s",
            (study_id, version, int(status)),
        )
        return rows[0]

    async def wait_for_delivery(self, report_id: str, status: int) -> dict[str, Any]:
        """The report row once its delivery status is `status` (DeliveryStatus number)."""
        rows = await self.wait_for_rows(
            "SELECT * FROM report.reports WHERE report_id = %s AND delivery_status = %s",
            (report_id, status),
        )
        return rows[0]

    async def wait_until_consumed(self, durable: str, stream: str, timeout_s: float = 30) -> None:
        """Until the durable consumer has nothing pending and nothing unacknowledged."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = await self.js.consumer_info(stream, durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{durable} did not drain")

    async def shorten_server_backoff(self, spec: ConsumerSpec, seconds: float = 1.0) -> None:
        """Shrink a job consumer's server-side backoff so a test sees all its attempts quickly.

        With a BackOff list, nats-server schedules the redelivery after a `nak(delay)` of
        delivery n >= 2 at `delay + backoff[n-1] - backoff[0]` (90 s with the topology's
        30 s / 120 s), whatever delay the consumer asked for; a flat backoff makes it `delay`.
        """
        short = replace(spec, backoff_s=(seconds,) * len(spec.backoff_s), ack_wait_s=seconds)
        await self.js.add_consumer(spec.stream, short.config())

    async def download(self, report_name: str, **metadata: Any) -> tuple[bytes, list[Any]]:
        """DownloadReport: the PDF and the stream's messages."""
        messages = [
            m
            async for m in self.report.download_report(
                DownloadReportRequest(name=report_name), metadata=self.metadata(**metadata)
            )
        ]
        return b"".join(m.chunk for m in messages), messages

    async def messages(
        self, subject: str, cls: type[ProtoMessage], *, count: int = 1, timeout_s: float = 30
    ) -> list[Any]:
        """Every message on `subject` so far (waiting for at least `count`), decoded."""
        return await published(self.js, subject, cls, count=count, timeout_s=timeout_s)

    # ------------------------------------------------------------------ seeding

    async def seed_study(
        self,
        *,
        clinic_id: str = CLINIC,
        patient_ref: str = "PAT-0042",
        description: str = "Chest X-ray and admission note",
        image_labels: list[tuple[str, float]] | None = None,
        cache_note: bool = True,
        note: TextAnalysis | None = None,
    ) -> SeededStudy:
        """A study with a PNG and a note, ANALYSED, each with a result in `infer.results`;
        the note's result is also cached in Redis the way svc_infer caches it."""
        now = datetime.now(UTC)
        study_id, image_id, note_id = (str(uuid.uuid4()) for _ in range(3))
        await self.execute(
            "INSERT INTO ingest.studies (study_id, clinic_id, patient_ref, description, status,"
            " creator, create_time, update_time) VALUES (%s, %s, %s, %s, 5, 'users/u1', %s, %s)",
            (study_id, clinic_id, patient_ref, description, now - timedelta(minutes=5), now),
        )
        for file_id, kind, name, content_type, offset in (
            (image_id, FileKind.IMAGE_PNG, "chest <pa>.png", "image/png", 0),
            (note_id, FileKind.TEXT_NOTE, "admission-note.txt", "text/plain; charset=utf-8", 1),
        ):
            await self.add_file(study_id, file_id, kind, name, content_type, clinic_id, offset)
        labels = image_labels or [("consolidation", 0.812), ("effusion", 0.104), ("normal", 0.05)]
        image_result = await self.add_image_result(study_id, image_id, labels, clinic_id=clinic_id)
        note_result = str(uuid.uuid4())
        result = self.note_result(note_result, study_id, note_id, clinic_id, note)
        await self.insert_result(result)
        if cache_note:
            await self.cache_result(result)
        return SeededStudy(
            study_id, clinic_id, image_id, note_id, image_result, note_result,
            [image_result, note_result],
        )  # fmt: skip

    async def add_file(
        self,
        study_id: str,
        file_id: str,
        kind: FileKind,
        name: str,
        content_type: str,
        clinic_id: str = CLINIC,
        offset_s: int = 0,
        status: int = 5,
    ) -> None:
        """A row of `ingest.medical_data`."""
        when = datetime.now(UTC) - timedelta(minutes=4) + timedelta(seconds=offset_s)
        await self.execute(
            "INSERT INTO ingest.medical_data (file_id, study_id, clinic_id, kind, file_name,"
            " content_type, size_bytes, sha256, object_key, status, create_time, update_time)"
            " VALUES (%s, %s, %s, %s, %s, %s, 100, %s, %s, %s, %s, %s)",
            (
                file_id,
                study_id,
                clinic_id,
                int(kind),
                name,
                content_type,
                uuid.uuid4().hex,
                f"{clinic_id}/{file_id}",
                status,
                when,
                when,
            ),
        )

    async def add_image_result(
        self,
        study_id: str,
        file_id: str,
        labels: list[tuple[str, float]],
        *,
        clinic_id: str = CLINIC,
        model_version: int = 3,
    ) -> str:
        """An image result in `infer.results` and its processed picture in S3."""
        result_id = str(uuid.uuid4())
        key = f"{clinic_id}/{study_id}/{file_id}/resnet50-v{model_version}.png"
        rng = np.random.default_rng(7)
        picture = Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        await self.objects.put_bytes(
            PROCESSED_IMAGES, key, buffer.getvalue(), content_type="image/png"
        )
        await self.execute(
            "INSERT INTO infer.results (result_id, job_id, clinic_id, study_id, file_id, kind,"
            " model_name, model_version, preprocessing_version, arm, analysis, processed_key)"
            " VALUES (%s, %s, %s, %s, %s, %s, 'resnet50', %s, 'img-pre-2', 1, %s, %s)",
            (
                result_id,
                str(uuid.uuid4()),
                clinic_id,
                study_id,
                file_id,
                int(AnalysisKind.IMAGE_CLASSIFICATION),
                model_version,
                Jsonb({"top_k": [{"label": lb, "score": s} for lb, s in labels]}),
                key,
            ),
        )
        return result_id

    def note_result(
        self,
        result_id: str,
        study_id: str,
        file_id: str,
        clinic_id: str,
        text: TextAnalysis | None = None,
    ) -> Result:
        """A text result as svc_infer builds it (`medmesh.infer.v1.Result`); `text` replaces
        the default English analysis."""
        return Result(
            name=f"studies/{study_id}/results/{result_id}",
            result_id=result_id,
            study=f"studies/{study_id}",
            file=f"studies/{study_id}/files/{file_id}",
            kind=AnalysisKind.TEXT_ANALYSIS,
            model_name="models/minilm",
            model_version=2,
            preprocessing_version="txt-pre-7",
            arm=TrafficArm.STABLE,
            text=text
            or TextAnalysis(
                findings=[
                    LabelScore(label="pneumonia", score=0.734),
                    LabelScore(label="fever", score=0.421),
                ],
                urgency=LabelScore(label="urgent", score=0.66),
                summary="Fever and productive cough; right lower lobe crackles.",
            ),
            create_time=datetime.now(UTC),
            clinic_id=clinic_id,
        )

    async def insert_result(self, result: Result) -> None:
        """The row svc_infer stores for `result`."""
        study_id = result.study.removeprefix("studies/")
        assert result.text is not None or result.image is not None
        analysis: dict[str, Any]
        if result.text is not None:
            analysis = {
                "findings": [{"label": f.label, "score": f.score} for f in result.text.findings],
                "urgency": {
                    "label": result.text.urgency.label,  # type: ignore[union-attr]
                    "score": result.text.urgency.score,  # type: ignore[union-attr]
                },
                "summary": result.text.summary,
            }
            if result.text.language:
                analysis["language"] = result.text.language
                analysis["model_languages"] = list(result.text.model_languages)
                analysis["outside_model_languages"] = result.text.outside_model_languages
        else:
            image = result.image
            assert isinstance(image, ImageClassification)
            analysis = {"top_k": [{"label": s.label, "score": s.score} for s in image.top_k]}
        await self.execute(
            "INSERT INTO infer.results (result_id, job_id, clinic_id, study_id, file_id, kind,"
            " model_name, model_version, preprocessing_version, arm, analysis)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 1, %s)",
            (
                result.result_id,
                str(uuid.uuid4()),
                result.clinic_id,
                study_id,
                result.file.rpartition("/files/")[2],
                int(result.kind),
                result.model_name.removeprefix("models/"),
                result.model_version,
                result.preprocessing_version,
                Jsonb(analysis),
            ),
        )

    async def cache_result(self, result: Result) -> None:
        """Cache `result` under svc_infer's key (`<root>:infer:result:<id>`, TTL 1 h)."""
        await self.redis.set(
            f"{self.prefix}:infer:result:{result.result_id}", bytes(result), ex=3600
        )

    async def seed_user(
        self,
        email_address: str,
        *,
        clinic_id: str = CLINIC,
        roles: tuple[str, ...] = ("clinician",),
        verified: bool = True,
        disabled: bool = False,
    ) -> None:
        """An account in `auth.users` (with its clinic) holding `roles`."""
        user_id = uuid.uuid4()
        await self.execute(
            "INSERT INTO auth.clinics (clinic_id) VALUES (%s) ON CONFLICT DO NOTHING", (clinic_id,)
        )
        await self.execute(
            "INSERT INTO auth.users (user_id, clinic_id, email, display_name, password_hash,"
            " email_verified, disabled) VALUES (%s, %s, %s, %s, 'x', %s, %s)",
            (user_id, clinic_id, email_address, email_address.split("@")[0], verified, disabled),
        )
        for role in roles:
            await self.execute(
                "INSERT INTO auth.user_roles (user_id, role) VALUES (%s, %s)", (user_id, role)
            )

    async def announce(self, study: SeededStudy) -> StudyResultsReady:
        """Publish StudyResultsReady for the study, as svc_infer does."""
        event = StudyResultsReady(
            event_id=str(uuid.uuid4()),
            clinic_id=study.clinic_id,
            study_id=study.study_id,
            result_ids=list(study.result_ids),
            event_time=datetime.now(UTC),
        )
        await publish_message(
            self.js,
            self.topology.study_event_subject("results_ready"),
            event,
            msg_id=event.event_id,
        )
        return event
