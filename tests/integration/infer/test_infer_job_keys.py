"""A job message is checked against its clinic before its object is read: a forged or
misrouted job (another clinic's object key, the presigned-upload staging area, a path trick,
another bucket, another clinic's lane) is dead-lettered on its first attempt and no result is
made from the object it names, although that object exists and is a fine image."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import pytest
from support.infer import CLINIC, OTHER_CLINIC, InferHarness, png_bytes

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.events.v1 import DeadLetterEnvelope, InferenceJob
from medmesh.jetstream import publish_message
from medmesh.objects import RAW_IMAGES, REPORTS_ARCHIVE


def _key(*parts: str) -> str:
    return "/".join(parts)


# (case, bucket, the key's part before `<study>/<file>`, lane's clinic, expected reason).
# The dot-dot key is not stored first: the S3 client refuses such names outright, so a job
# naming one must be refused at once rather than retried four times.
CASES = [
    ("another clinic's key", RAW_IMAGES, OTHER_CLINIC, CLINIC, "is not under clinic"),
    ("staging area", RAW_IMAGES, f"staging/{CLINIC}", CLINIC, "is not under clinic"),
    ("dot-dot segment", RAW_IMAGES, f"{CLINIC}/../{OTHER_CLINIC}", CLINIC, "is not under clinic"),
    ("another bucket", REPORTS_ARCHIVE, CLINIC, CLINIC, "is not the raw images bucket"),
    ("another clinic's lane", RAW_IMAGES, CLINIC, OTHER_CLINIC, "arrived on the lane of"),
]


@pytest.mark.parametrize(
    ("bucket", "prefix", "lane", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_a_forged_job_is_dead_lettered_at_once_and_its_object_is_not_read(
    infer: InferHarness, bucket: str, prefix: str, lane: str, reason: str
) -> None:
    data = png_bytes(7)
    study_id, file_id = str(uuid.uuid4()), str(uuid.uuid4())
    key = _key(prefix, study_id, file_id)
    if ".." not in key:
        await infer.objects.put_bytes(bucket, key, data, content_type="image/png")
    forged = InferenceJob(
        job_id=str(uuid.uuid4()),
        clinic_id=CLINIC,
        study_id=study_id,
        file_id=file_id,
        kind=FileKind.IMAGE_PNG,
        bucket=bucket,
        object_key=key,
        content_type="image/png",
        sha256=hashlib.sha256(data).hexdigest(),
        enqueue_time=datetime.now(UTC),
        study_file_count=1,
    )
    subject = infer.topology.lane_subject(infer.topology.infer_image_subject, lane)
    await publish_message(infer.js, subject, forged, msg_id=forged.job_id)
    fine = await infer.publish_job(png_bytes(8), FileKind.IMAGE_PNG)

    (letter,) = await infer.wait_for_rows(
        "SELECT * FROM infer.dead_letters WHERE clinic_id = %s", (CLINIC,), timeout_s=120
    )
    assert letter["attempts"] == 1
    assert reason in letter["error"]
    assert letter["subject"] == infer.topology.infer_image_subject
    (envelope,) = await infer.messages(
        infer.topology.dlq_subject(infer.topology.infer_image_subject), DeadLetterEnvelope
    )
    assert envelope.payload == bytes(forged)
    await infer.wait_for_result(fine.file_id)
    assert await infer.query("SELECT 1 FROM infer.results WHERE file_id = %s", (file_id,)) == []
