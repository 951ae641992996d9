"""ReplayDeadLetter for every kind of dead letter: the original payload goes back on its
original subject (an inference job on its clinic's lane), marked as a replay (so its consumer
reopens what the failure closed), and a letter of a subject no consumer handles is refused
with FAILED_PRECONDITION, not published into the void."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
import nats.js.errors
import pytest
from support.infer import CLINIC, InferHarness

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.events.v1 import (
    DeadLetterEnvelope,
    DeliveryJob,
    InferenceJob,
    ReportJob,
    StudyResultsReady,
)
from gen.medmesh.infer.v1 import ReplayDeadLetterRequest
from medmesh.jetstream import CLINIC_ID_HEADER, Topology, publish_message
from medmesh.settle import REPLAY_HEADER

KINDS: list[tuple[str, Callable[[Topology], str], bytes]] = [
    (
        "inference-image-job",
        lambda t: t.infer_image_subject,
        bytes(InferenceJob(job_id="j-1", clinic_id=CLINIC, kind=FileKind.IMAGE_PNG)),
    ),
    (
        "inference-text-job",
        lambda t: t.infer_text_subject,
        bytes(InferenceJob(job_id="j-2", clinic_id=CLINIC, kind=FileKind.TEXT_NOTE)),
    ),
    (
        "report-job",
        lambda t: t.report_subject,
        bytes(ReportJob(job_id="j-3", clinic_id=CLINIC, study_id="s-1", report_id="r-1")),
    ),
    (
        "delivery-job",
        lambda t: t.deliver_subject,
        bytes(DeliveryJob(job_id="j-4", clinic_id=CLINIC, report_id="r-1", idempotency_key="k")),
    ),
    (
        "results-ready-event",
        lambda t: t.study_event_subject("results_ready"),
        bytes(StudyResultsReady(event_id="e-1", clinic_id=CLINIC, study_id="s-1")),
    ),
]


async def dead_letter(infer: InferHarness, subject: str, payload: bytes) -> str:
    """Publish a letter as a consumer would have, wait for the index; its resource name."""
    now = datetime.now(UTC)
    envelope = DeadLetterEnvelope(
        original_subject=subject,
        payload=payload,
        error="failed its last attempt",
        attempts=4,
        first_failure_time=now,
        last_failure_time=now,
        clinic_id=CLINIC,
        headers={"Nats-Msg-Id": "original", "X-Custom": "kept"},
    )
    marker = str(uuid.uuid4())
    await publish_message(
        infer.js,
        infer.topology.dlq_subject(subject),
        envelope,
        msg_id=marker,
        headers={CLINIC_ID_HEADER: CLINIC},
    )
    rows = await infer.wait_for_rows(
        "SELECT dead_letter_id FROM infer.dead_letters WHERE subject = %s", (subject,)
    )
    return f"deadLetters/{rows[0]['dead_letter_id']}"


@pytest.mark.parametrize(
    ("subject_of", "payload"),
    [pytest.param(subject_of, payload, id=kind) for kind, subject_of, payload in KINDS],
)
async def test_every_kind_of_dead_letter_is_replayed_on_its_subject_with_its_payload(
    infer: InferHarness, subject_of: Callable[[Topology], str], payload: bytes
) -> None:
    subject = subject_of(infer.topology)
    name = await dead_letter(infer, subject, payload)

    replayed = await infer.inference.replay_dead_letter(
        ReplayDeadLetterRequest(name=name), metadata=infer.admin()
    )

    assert replayed.dead_letter.replay_time is not None
    # Inference jobs go back on the clinic's lane (fair scheduling), the others as they were.
    published_on = infer.topology.publish_subject(subject, CLINIC)
    assert published_on != subject or subject not in infer.topology.laned_subjects
    stream = await infer.js.find_stream_name_by_subject(published_on)
    message = await infer.js.get_last_msg(stream, published_on)
    assert message.data == payload
    headers = message.headers or {}
    assert headers[REPLAY_HEADER] == name.removeprefix("deadLetters/")
    assert headers["X-Custom"] == "kept"
    assert headers["Nats-Msg-Id"] == f"replay-{name.removeprefix('deadLetters/')}"


async def test_a_dead_letter_of_a_subject_no_consumer_handles_is_refused_and_not_published(
    infer: InferHarness,
) -> None:
    subject = infer.topology.subject("jobs.legacy")  # inside the JOBS stream, read by nobody
    name = await dead_letter(infer, subject, b"opaque")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await infer.inference.replay_dead_letter(
            ReplayDeadLetterRequest(name=name), metadata=infer.admin()
        )

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot be replayed" in (refused.value.details() or "")
    with pytest.raises(nats.js.errors.NotFoundError):
        await infer.js.get_last_msg(infer.topology.jobs_stream, subject)
    rows = await infer.query(
        "SELECT replay_time FROM infer.dead_letters WHERE subject = %s", (subject,)
    )
    assert rows == [{"replay_time": None}]
