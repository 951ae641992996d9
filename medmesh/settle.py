"""One settle policy for every JetStream job consumer: ack, retry with a delay, or dead-letter.

Every job ends either done (acked) or in the dead-letter stream; none is dropped. The rules:

- An attempt is one delivery of the message (`num_delivered`). A job gets
  `ConsumerSpec.max_attempts` attempts (MEDMESH_JOB_MAX_ATTEMPTS, default 4: tried once,
  retried three times), the same for every consumer.
- `Done` acks. `Retry(error)` naks with the consumer's delay for that attempt (the last delay
  repeats); on the last attempt it dead-letters instead. `GiveUp(error)` dead-letters now (no
  retry can help: an undecodable payload, a 4xx from the MIS).
- A dead letter is published with retries (the DLQ publish itself can fail while NATS is
  restarting); only a published letter is followed by `term`. If every try fails the job is
  nak'ed with the longest delay, so it comes back and is dead-lettered on that delivery.
- **Attempts that never settle.** A worker killed mid-batch, or stalled past the ack wait,
  settles nothing; the server redelivers after `ack_wait`. The server's `max_deliver` is
  unlimited (ConsumerSpec), so this never drops the job; the delivery *after* the last attempt
  (`Attempt.exhausted`) is dead-lettered by whichever worker gets it, before any work. Why not
  the server's limit and its MAX_DELIVERIES advisory: with a server limit the job leaves the
  consumer on its last timeout, and the advisory is a core-NATS message that nobody receives
  when no worker is connected at that moment (every replica restarting), so the job would
  sit in the stream, never handled again. Why not "dead-letter on the last delivery if it will
  not finish": a kill -9 during that last delivery would lose the job the same way.
- Long work keeps its jobs: medmesh.consumers.PullConsumer sends `in_progress` for every
  unsettled message of a batch every third of the ack wait while the handler runs, so only a
  dead or stalled worker lets a job time out.

svc_infer's workers (batches) and svc_report's consumers (one message at a time) both settle
through `Settler`; neither has its own copy of these rules. A dead letter is replayed with
`republish_dead_letter` (ReplayDeadLetter): the original payload on the original subject,
marked with REPLAY_HEADER.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck

from medmesh.errors import DomainError
from medmesh.jetstream import (
    MSG_ID_HEADER,
    ConsumerSpec,
    RawPayload,
    publish_dead_letter,
    publish_message,
)
from medmesh.resources import JetStream

log = structlog.get_logger(__name__)

DLQ_PUBLISH_TRIES = 5
"""Tries of one dead-letter publish before the job is nak'ed to come back later."""
DLQ_RETRY_INITIAL_S = 0.5
"""Wait before the 2nd try of a dead-letter publish; doubles for each further try."""


@dataclass(frozen=True)
class Done:
    """Processed (or nothing to do): ack."""


@dataclass(frozen=True)
class Retry:
    """Failed for a reason a later attempt may not have (database, S3, model server)."""

    error: str


@dataclass(frozen=True)
class GiveUp:
    """Failed for good: dead-letter now."""

    error: str


Outcome = Done | Retry | GiveUp


@dataclass(frozen=True)
class Attempt:
    """Which delivery of a job this is, against the consumer's attempt limit.

    `last`: a failure now dead-letters. `exhausted`: every attempt was used up without
    settling (ack timeouts): dead-letter it without trying again. `replay_of`: the dead
    letter this job was replayed from ("" for an ordinary job).
    """

    number: int
    max_attempts: int
    replay_of: str = ""

    @property
    def last(self) -> bool:
        """Whether this is the job's last attempt (or past it)."""
        return self.number >= self.max_attempts

    @property
    def exhausted(self) -> bool:
        """Whether the job's attempts ran out before this delivery."""
        return self.number > self.max_attempts


class Settler:
    """Settles the messages of one durable job consumer (see the module doc for the rules)."""

    def __init__(
        self,
        jetstream: JetStream,
        spec: ConsumerSpec,
        retry_backoff_s: tuple[float, ...],
        *,
        dlq_publish_tries: int = DLQ_PUBLISH_TRIES,
        dlq_retry_initial_s: float = DLQ_RETRY_INITIAL_S,
    ) -> None:
        if not retry_backoff_s or dlq_publish_tries < 1:
            raise ValueError("retry_backoff_s needs a delay and dlq_publish_tries at least 1")
        self.spec = spec
        self._jetstream = jetstream
        self._retry_backoff_s = retry_backoff_s
        self._dlq_publish_tries = dlq_publish_tries
        self._dlq_retry_initial_s = dlq_retry_initial_s

    def attempt(self, msg: Msg) -> Attempt:
        """The attempt `msg` is (a message not from JetStream counts as the first)."""
        try:
            number = int(msg.metadata.num_delivered)
        except nats.errors.NotJSMessageError:
            number = 1
        replay_of = (msg.headers or {}).get(REPLAY_HEADER, "")
        return Attempt(number, self.spec.max_attempts, replay_of)

    def ran_out(self, attempt: Attempt) -> str:
        """The dead letter's error for a job whose attempts ran out without settling."""
        return (
            f"attempts ran out: {attempt.max_attempts} attempt(s) used, the last one did not "
            f"settle within the ack wait of {self.spec.ack_wait_s:g} s (worker stopped or "
            "stalled, or its dead-letter publish failed)"
        )

    def retry_delay_s(self, attempt: Attempt) -> float:
        """The nak delay after failed attempt `attempt` (the last configured delay repeats)."""
        delays = self._retry_backoff_s
        return delays[min(attempt.number, len(delays)) - 1]

    async def settle(
        self,
        msg: Msg,
        outcome: Outcome,
        attempt: Attempt,
        *,
        clinic_id: str = "",
        first_failure_time: datetime | None = None,
    ) -> None:
        """Ack, nak with the attempt's delay, or dead-letter (then term)."""
        if isinstance(outcome, Done):
            await msg.ack()
            return
        log.info(
            "consumer.job_failed",
            consumer=self.spec.durable,
            attempt=attempt.number,
            max_attempts=attempt.max_attempts,
            error=outcome.error,
        )
        if isinstance(outcome, Retry) and not attempt.last:
            await msg.nak(delay=self.retry_delay_s(attempt))
            return
        await self.dead_letter(
            msg, outcome.error, attempt, clinic_id=clinic_id, first_failure_time=first_failure_time
        )

    async def dead_letter(
        self,
        msg: Msg,
        error: str,
        attempt: Attempt,
        *,
        clinic_id: str = "",
        first_failure_time: datetime | None = None,
    ) -> bool:
        """Publish the job's dead letter (retried), then term it; True when it was published.
        When every try fails the job is nak'ed with the longest delay and comes back."""
        delay = self._dlq_retry_initial_s
        for tries in range(1, self._dlq_publish_tries + 1):
            try:
                await publish_dead_letter(
                    self._jetstream.js,
                    self._jetstream.topology,
                    msg,
                    error,
                    clinic_id=clinic_id,
                    first_failure_time=first_failure_time,
                    attempts=min(attempt.number, attempt.max_attempts),
                )
                break
            except DomainError as exc:  # NATS unavailable: keep the job until it is back
                log.warning(
                    "consumer.dead_letter_failed",
                    consumer=self.spec.durable,
                    error=str(exc),
                    tries=tries,
                )
                if tries < self._dlq_publish_tries:
                    await asyncio.sleep(delay)
                    delay *= 2
        else:
            await msg.nak(delay=self._retry_backoff_s[-1])
            return False
        await msg.term()
        log.warning(
            "consumer.dead_lettered", consumer=self.spec.durable, subject=msg.subject, error=error
        )
        return True


REPLAY_HEADER = "Medmesh-Replay-Of"
"""Set on a replayed job (the dead letter's id): its consumer may reopen what the failure
closed (a FAILED report or delivery) before handling it again."""


async def republish_dead_letter(
    js: JetStreamContext,
    letter_id: str,
    subject: str,
    payload: bytes,
    headers: dict[str, str],
) -> PubAck:
    """Publish a dead letter's original payload on its original subject, as a new message
    (its consumer counts attempts from one again) marked with REPLAY_HEADER. The Msg-Id is
    derived from the letter, so replaying the same letter twice within the duplicate window
    publishes once. The original trace context and Msg-Id are not carried over.
    """
    kept = {
        k: v
        for k, v in headers.items()
        if k not in {MSG_ID_HEADER, REPLAY_HEADER, "traceparent", "tracestate"}
    }
    kept[REPLAY_HEADER] = letter_id
    return await publish_message(
        js, subject, RawPayload(payload), msg_id=f"replay-{letter_id}", headers=kept
    )
