"""Failing jobs: exactly MEDMESH_JOB_MAX_ATTEMPTS attempts (4 by default), the dead-letter
stream, InferenceFailed, listing and replaying dead letters (admin only, per clinic)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from support.infer import CLINIC, OTHER_CLINIC, InferHarness, png_bytes

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.events.v1 import DeadLetterEnvelope, InferenceFailed, InferenceJob
from gen.medmesh.infer.v1 import ListDeadLettersRequest, ReplayDeadLetterRequest
from medmesh.objects import RAW_IMAGES

NOT_AN_IMAGE = b"\x89PNG\r\n\x1a\n but the rest is not a PNG at all"


async def test_a_job_whose_preprocessing_always_fails_is_tried_four_times_then_replayed(
    infer: InferHarness,
) -> None:
    # No sha256 in the job: the file is "fixed" later by replacing the object.
    job = await infer.publish_job(NOT_AN_IMAGE, FileKind.IMAGE_PNG, sha256="")
    letters = await infer.wait_for_rows(
        "SELECT * FROM infer.dead_letters WHERE clinic_id = %s", (CLINIC,), timeout_s=120
    )
    letter = letters[0]
    assert infer.topology.max_attempts == 4  # once, then three retries
    assert letter["attempts"] == 4
    assert letter["subject"] == infer.topology.infer_image_subject
    assert "PreprocessingError" in letter["error"] or "decode" in letter["error"]
    assert InferenceJob.FromString(bytes(letter["payload"])).job_id == job.job_id

    envelopes = await infer.messages(
        infer.topology.dlq_subject(infer.topology.infer_image_subject), DeadLetterEnvelope
    )
    assert [(e.attempts, e.clinic_id) for e in envelopes] == [(4, CLINIC)]
    failed = await infer.messages(infer.topology.result_failed_subject, InferenceFailed)
    assert [(f.job_id, f.attempts) for f in failed] == [(job.job_id, 4)]

    await asyncio.sleep(1.5)  # longer than every backoff: a 5th attempt would show by now
    attempts = await infer.query(
        "SELECT attempts FROM infer.job_failures WHERE job_id = %s", (job.job_id,)
    )
    assert attempts == [{"attempts": 4}]
    assert await infer.query("SELECT 1 FROM infer.results WHERE file_id = %s", (job.file_id,)) == []

    listed = await infer.inference.list_dead_letters(
        ListDeadLettersRequest(), metadata=infer.admin()
    )
    assert [d.dead_letter_id for d in listed.dead_letters] == [str(letter["dead_letter_id"])]
    name = listed.dead_letters[0].name

    # The cause is fixed (a readable file in place of the broken one), then the replay.
    await infer.objects.put_bytes(RAW_IMAGES, job.object_key, png_bytes(7))
    replayed = await infer.inference.replay_dead_letter(
        ReplayDeadLetterRequest(name=name), metadata=infer.admin()
    )
    assert replayed.dead_letter.replay_time is not None
    row = await infer.wait_for_result(job.file_id)
    assert row["job_id"] == job.job_id

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await infer.inference.replay_dead_letter(
            ReplayDeadLetterRequest(name=name), metadata=infer.admin()
        )
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_dead_letters_are_admin_only_and_per_clinic(infer: InferHarness) -> None:
    job = await infer.publish_job(b"", FileKind.IMAGE_PNG, sha256="", upload=False)
    letters = await infer.wait_for_rows(
        "SELECT dead_letter_id FROM infer.dead_letters", (), timeout_s=120
    )
    name = f"deadLetters/{letters[0]['dead_letter_id']}"
    assert job.clinic_id == CLINIC

    for call in (
        infer.inference.list_dead_letters(ListDeadLettersRequest(), metadata=infer.metadata()),
        infer.inference.replay_dead_letter(
            ReplayDeadLetterRequest(name=name), metadata=infer.metadata()
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call
        assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED

    other = infer.admin(OTHER_CLINIC)
    listed = await infer.inference.list_dead_letters(ListDeadLettersRequest(), metadata=other)
    assert list(listed.dead_letters) == []
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await infer.inference.replay_dead_letter(ReplayDeadLetterRequest(name=name), metadata=other)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND

    filtered = await infer.inference.list_dead_letters(
        ListDeadLettersRequest(subject=infer.topology.infer_text_subject), metadata=infer.admin()
    )
    assert list(filtered.dead_letters) == []
