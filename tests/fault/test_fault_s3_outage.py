"""The S3 server (the project's emulator, a process of the test's own) stopped:

* during uploads: CreateTextNote and the UploadFile stream answer UNAVAILABLE and leave no
  file row, no job in the outbox and no object; S3 returns and the same uploads succeed with
  no restart;
* during inference: jobs whose raw file cannot be read are retried with backoff and complete
  when S3 returns within their attempts; an outage longer than the attempts sends them to the
  dead-letter stream, and replaying each dead letter once S3 is back gives every file exactly
  one result. No job is lost, none is done twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fault_stack import (
    CLINIC,
    FaultStack,
    RestartableS3,
    running_infer,
    running_ingest,
    wait_for_count,
)
from support.infer import CONTENT_TYPES, png_bytes
from support.tokens import TokenFactory

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.events.v1 import InferenceJob
from gen.medmesh.infer.v1 import ListDeadLettersRequest, ReplayDeadLetterRequest
from gen.medmesh.ingest.v1 import (
    CreateStudyRequest,
    CreateTextNoteRequest,
    UploadFileMetadata,
    UploadFileRequest,
)
from medmesh.jetstream import connect_nats, publish_message
from medmesh.objects import RAW_IMAGES, ObjectStore

# Four attempts 1 + 2 + 4 s apart: an outage of a few seconds is ridden out, a long one is not.
RETRY_BACKOFF_S = "1,2,4"
SHORT_OUTAGE_S = 2.0
LONG_OUTAGE_GRACE_S = 3.0


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[RestartableS3]:
    """An S3 server of this test's own, so it can stop and start it."""
    server = RestartableS3(tmp_path / "s3-data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def own_objects(own_s3: RestartableS3, name_prefix: str) -> AsyncIterator[ObjectStore]:
    """The test's buckets on its own S3 server."""
    objects = ObjectStore(own_s3.url, bucket_prefix=f"{name_prefix}-")
    await objects.ensure_buckets()
    try:
        yield objects
    finally:
        objects.close()


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error a call fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    return failure.value


async def test_uploads_while_s3_is_down_answer_unavailable_and_leave_nothing_behind(
    fault_stack: FaultStack,
    own_s3: RestartableS3,
    own_objects: ObjectStore,
    tokens: TokenFactory,
) -> None:
    stack = fault_stack
    auth = tokens.metadata_for(user_id="u-1", clinic_id=CLINIC, roles=["clinician"])
    image = png_bytes(7)

    def stream(parent: str) -> AsyncIterator[UploadFileRequest]:
        meta = UploadFileMetadata(
            parent=parent,
            kind=FileKind.IMAGE_PNG,
            file_name="chest.png",
            content_type="image/png",
            size_bytes=len(image),
            sha256=hashlib.sha256(image).hexdigest(),
        )

        async def messages() -> AsyncIterator[UploadFileRequest]:
            yield UploadFileRequest(metadata=meta)
            yield UploadFileRequest(chunk=image)

        return messages()

    async with running_ingest(stack, tokens, s3_url=own_s3.url) as stub:
        study = (
            await stub.create_study(CreateStudyRequest(patient_ref="P-s3"), metadata=auth)
        ).study
        outbox_before = await stack.count("SELECT count(*) FROM ingest.outbox")
        own_s3.stop()
        note = CreateTextNoteRequest(parent=study.name, text="Cough and fever, S3 is down.")
        errors = [
            await refused(stub.create_text_note(note, metadata=auth)),
            await refused(stub.upload_file(stream(study.name), metadata=auth)),
        ]
        rows_during = await stack.count(
            "SELECT count(*) FROM ingest.medical_data WHERE study_id = %s", (study.study_id,)
        )
        outbox_during = await stack.count("SELECT count(*) FROM ingest.outbox")
        own_s3.start()  # same port, same objects
        written = [
            await stub.create_text_note(note, metadata=auth),
            await stub.upload_file(stream(study.name), metadata=auth),
        ]

    assert [e.code() for e in errors] == [grpc.StatusCode.UNAVAILABLE] * 2, errors
    assert all("s3" in (e.details() or "") for e in errors), errors
    assert rows_during == 0  # no orphan file row
    rows = await stack.query(
        "SELECT file_id::text AS file_id FROM ingest.medical_data WHERE study_id = %s",
        (study.study_id,),
    )
    assert sorted(r["file_id"] for r in rows) == sorted(w.file.file_id for w in written)
    keys = await own_objects.list_keys(RAW_IMAGES, f"{CLINIC}/{study.study_id}/")
    assert sorted(keys) == sorted(
        f"{CLINIC}/{study.study_id}/{w.file.file_id}" for w in written
    )  # nothing from the refused uploads
    assert outbox_during == outbox_before  # and no job announced


async def publish_notes(
    stack: FaultStack, js: Any, objects: ObjectStore, count: int
) -> list[InferenceJob]:
    """`count` notes in the raw bucket, each with its text job."""
    jobs = []
    content_type = CONTENT_TYPES[FileKind.TEXT_NOTE]
    for n in range(count):
        data = f"Note {n}: cough, fever and crackles over the right lower lobe.".encode()
        study_id, file_id = str(uuid.uuid4()), str(uuid.uuid4())
        key = f"{CLINIC}/{study_id}/{file_id}"
        await objects.put_bytes(RAW_IMAGES, key, data, content_type=content_type)
        jobs.append(
            InferenceJob(
                job_id=str(uuid.uuid4()),
                clinic_id=CLINIC,
                study_id=study_id,
                file_id=file_id,
                kind=FileKind.TEXT_NOTE,
                bucket=RAW_IMAGES,
                object_key=key,
                content_type=content_type,
                sha256=hashlib.sha256(data).hexdigest(),
                study_file_count=1,
            )
        )
    return jobs


async def publish(stack: FaultStack, js: Any, jobs: list[InferenceJob]) -> None:
    """Put the jobs on the text subject."""
    for job in jobs:
        await publish_message(js, stack.topology.infer_text_subject, job, msg_id=job.job_id)


async def test_inference_retries_through_an_s3_outage_and_dead_letters_replay_after_a_long_one(
    fault_stack: FaultStack,
    own_s3: RestartableS3,
    own_objects: ObjectStore,
    tokens: TokenFactory,
    model_server_address: str,
) -> None:
    stack = fault_stack
    began = time.monotonic()
    extra = {
        "MEDMESH_INFER_TF_SERVING_ADDR": model_server_address,
        "MEDMESH_INFER_RETRY_BACKOFF_S": RETRY_BACKOFF_S,
    }
    admin = tokens.metadata_for(user_id="u-admin", clinic_id=CLINIC, roles=["admin"])
    nc, js = await connect_nats(stack.base_env["MEDMESH_NATS_URL"], name="fault-s3")
    try:
        async with running_infer(stack, tokens, extra, s3_url=own_s3.url) as (stub, _):
            # A short outage: the jobs' first attempts fail, later ones succeed.
            short = await publish_notes(stack, js, own_objects, 4)
            own_s3.stop()
            await publish(stack, js, short)
            await wait_for_count(stack, "SELECT count(*) FROM infer.job_failures", 1, [])
            await asyncio.sleep(SHORT_OUTAGE_S)
            own_s3.start()
            await wait_for_count(stack, "SELECT count(*) FROM infer.results", len(short), [])
            dead_after_short = await stack.count("SELECT count(*) FROM infer.dead_letters")

            # A long outage: every attempt fails, the jobs are dead-lettered, not dropped.
            long = await publish_notes(stack, js, own_objects, 3)
            own_s3.stop()
            await publish(stack, js, long)
            await wait_for_count(stack, "SELECT count(*) FROM infer.dead_letters", len(long), [])
            own_s3.start()
            await asyncio.sleep(LONG_OUTAGE_GRACE_S)  # nothing completes on its own
            results_before_replay = await stack.count("SELECT count(*) FROM infer.results")
            listed = await stub.list_dead_letters(
                ListDeadLettersRequest(page_size=100), metadata=admin
            )
            for letter in listed.dead_letters:
                await stub.replay_dead_letter(
                    ReplayDeadLetterRequest(name=letter.name), metadata=admin
                )
            total = len(short) + len(long)
            await wait_for_count(stack, "SELECT count(*) FROM infer.results", total, [])
            await asyncio.sleep(2)  # a late duplicate would show by now
    finally:
        await nc.drain()

    assert dead_after_short == 0
    assert results_before_replay == len(short)
    assert len(listed.dead_letters) == len(long)
    assert all("s3" in letter.error for letter in listed.dead_letters), listed
    rows = await stack.query(
        "SELECT file_id::text AS file_id, count(*) AS n FROM infer.results GROUP BY file_id"
    )
    assert {r["file_id"]: r["n"] for r in rows} == {j.file_id: 1 for j in short + long}
    print(  # noqa: T201 - the measured numbers, for the README (pytest -s)
        f"\nfault S3 outage: {len(short)} jobs through a {SHORT_OUTAGE_S:g} s outage, "
        f"{len(long)} dead-lettered and replayed; {time.monotonic() - began:.1f} s"
    )
