"""Dead letters: indexing the DLQ stream, listing it per clinic, replaying a job.

The DLQ stream is the record; `infer.dead_letters` is its index, filled by a durable
consumer of `<root>.dlq.>` (so a letter published by any service, or by a worker that crashed
right after publishing it, is indexed exactly once: the row is keyed by the letter's stream
sequence). Indexing an inference job also writes its `InferenceFailed` event, in the same
transaction. A replay republishes the job's payload on its original subject with a new
Msg-Id (a fresh message, so the consumer counts attempts from one again) and the
`Medmesh-Replay-Of` header (so svc_report's consumers reopen a FAILED report or delivery
before handling it), and stamps the row, so a second replay of the same letter is
FAILED_PRECONDITION. Every kind of letter the deployment's consumers produce can be replayed
(`Topology.replayable_subjects`: inference, report and delivery jobs, the results-ready
event); a letter of any other subject is refused with FAILED_PRECONDITION, never published.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import datetime

import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from opentelemetry import context as otel_context

from gen.medmesh.events.v1 import DeadLetterEnvelope, InferenceJob
from medmesh.consumers import PullConsumer
from medmesh.db import Database
from medmesh.errors import FailedPrecondition, InvalidArgument, NotFound
from medmesh.outbox import Outbox
from medmesh.resources import JetStream
from medmesh.settle import republish_dead_letter
from medmesh.telemetry import message_context
from svc_infer import dead_letter_store
from svc_infer.pages import decode_token, encode_token, page_size
from svc_infer.writer import announce_failure

log = structlog.get_logger(__name__)

INDEX_CONSUMER = "infer-dlq-index"
_ID_NAMESPACE = uuid.UUID("5f0c7c1e-8a5e-4b7e-9d3a-2f6f3b1d9c41")
_INDEX_BATCH = 50


def _job(payload: bytes) -> InferenceJob | None:
    """The payload as an InferenceJob, or None when it is something else."""
    try:
        job = InferenceJob.FromString(payload)
    except Exception:  # noqa: BLE001 - any parse failure means "not a job"
        return None
    return job if job.job_id else None


def dead_letter_id(stream: str, sequence: int) -> str:
    """The stable id of the letter at `sequence` in `stream`."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{stream}/{sequence}"))


class DeadLetterIndexer:
    """The durable consumer that indexes every dead letter of the deployment."""

    def __init__(self, jetstream: JetStream, database: Database, outbox: Outbox) -> None:
        self._jetstream = jetstream
        self._database = database
        self._outbox = outbox
        topology = jetstream.topology
        # A batch that fails (the database) is left unacked: redelivered after ack_wait.
        self._consumer = PullConsumer(
            jetstream.js,
            topology.dlq_stream,
            ConsumerConfig(
                durable_name=INDEX_CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                filter_subject=topology.subject("dlq.>"),
                ack_wait=30.0,
                max_ack_pending=1000,
            ),
            self.index,
            name="dlq-indexer",
            batch_size=_INDEX_BATCH,
        )

    async def start(self, stack: AsyncExitStack) -> None:
        """Declare the index consumer (idempotent) and run it until the stack closes."""
        await self._consumer.start(stack)

    async def stop(self) -> None:
        """Stop indexing; unacked letters are indexed by the next start."""
        await self._consumer.stop()

    async def index(self, messages: Sequence[Msg]) -> None:
        """Index a batch of DLQ messages in one transaction, then ack them."""
        root = self._jetstream.topology.subject("jobs.infer.")
        async with self._database.transaction() as conn:
            for msg in messages:
                meta = msg.metadata
                try:
                    envelope = DeadLetterEnvelope.FromString(msg.data)
                except Exception:  # noqa: BLE001 - not an envelope: nothing to index
                    log.warning("dlq_index.not_an_envelope", sequence=meta.sequence.stream)
                    continue
                letter_id = dead_letter_id(meta.stream, meta.sequence.stream)
                failed_at = envelope.last_failure_time or meta.timestamp
                inserted = await dead_letter_store.index_dead_letter(
                    conn,
                    dead_letter_store.DeadLetterRow(
                        dead_letter_id=letter_id,
                        stream_sequence=meta.sequence.stream,
                        subject=envelope.original_subject,
                        clinic_id=envelope.clinic_id,
                        payload=envelope.payload,
                        error=envelope.error,
                        attempts=envelope.attempts,
                        first_failure_time=envelope.first_failure_time or failed_at,
                        last_failure_time=failed_at,
                        msg_id=envelope.msg_id,
                        headers=dict(envelope.headers),
                        replay_time=None,
                    ),
                )
                job = _job(envelope.payload)
                if inserted and job is not None and envelope.original_subject.startswith(root):
                    # In the dead letter's trace (the job's): the study's status follows on.
                    token = otel_context.attach(message_context(msg.headers))
                    try:
                        await announce_failure(
                            conn,
                            self._outbox,
                            self._jetstream.topology,
                            job,
                            envelope.error,
                            envelope.attempts,
                            failed_at,
                        )
                    finally:
                        otel_context.detach(token)
        for msg in messages:
            await msg.ack()


class DeadLetters:
    """ListDeadLetters and ReplayDeadLetter for the caller's clinic."""

    def __init__(self, database: Database, jetstream: JetStream) -> None:
        self._database = database
        self._jetstream = jetstream

    async def list(
        self, clinic_id: str, size: int, token: str, subject: str
    ) -> tuple[list[dead_letter_store.DeadLetterRow], str]:
        """One page, newest failure first."""
        limit = page_size(size)
        key = decode_token("dead-letters", token, 3)
        after: tuple[datetime, uuid.UUID] | None = None
        if key is not None:
            if key[2] != subject:
                raise InvalidArgument.for_field("page_token", "belongs to another filter")
            after = (datetime.fromisoformat(key[0]), uuid.UUID(key[1]))
        async with self._database.read_connection() as conn:
            rows = await dead_letter_store.list_dead_letters(
                conn, clinic_id, subject, after, limit + 1
            )
        more = len(rows) > limit
        rows = rows[:limit]
        token_out = (
            encode_token(
                "dead-letters",
                [rows[-1].last_failure_time.isoformat(), rows[-1].dead_letter_id, subject],
            )
            if more
            else ""
        )
        return rows, token_out

    async def replay(self, clinic_id: str, letter_id: str) -> dead_letter_store.DeadLetterRow:
        """Republish the letter's job on its original subject, once."""
        try:
            key = uuid.UUID(letter_id)
        except ValueError:
            raise NotFound(f"deadLetters/{letter_id} does not exist") from None
        async with self._database.transaction() as conn:
            letter = await dead_letter_store.lock_dead_letter(conn, clinic_id, key)
            if letter is None:
                raise NotFound(f"deadLetters/{letter_id} does not exist")
            if letter.replay_time is not None:
                raise FailedPrecondition(f"deadLetters/{letter_id} was replayed already")
            if letter.subject not in self._jetstream.topology.replayable_subjects():
                raise FailedPrecondition(
                    f"deadLetters/{letter_id} holds a message of {letter.subject!r}, which no "
                    "medmesh consumer handles: it cannot be replayed"
                )
            # A failed publish raises before the stamp; a stamp that fails to commit after
            # a publish is de-duplicated by the Msg-Id on the next replay.
            await republish_dead_letter(
                self._jetstream.js,
                letter.dead_letter_id,
                self._jetstream.topology.publish_subject(letter.subject, letter.clinic_id),
                letter.payload,
                dict(letter.headers),
            )
            replayed_at = await dead_letter_store.mark_replayed(conn, key)
            job = _job(letter.payload)
            if job is not None:
                await dead_letter_store.forget_failures(conn, job.job_id)
        log.info("dead_letter.replayed", dead_letter=letter_id, subject=letter.subject)
        return dead_letter_store.DeadLetterRow(**{**letter.__dict__, "replay_time": replayed_at})
