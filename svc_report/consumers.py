"""svc_report's JetStream consumers: one loop, three durable consumers.

- `report-results-ready` (declared here, on the EVENTS stream): StudyResultsReady from
  svc_infer → a pending report row + a ReportJob, through the outbox.
- `report` (medmesh.jetstream.Topology.report_consumer): ReportJob → render, archive, announce.
- `deliver` (Topology.deliver_consumer): DeliveryJob → push to the clinic's MIS.

A handler returns what to do with its message: `Done` (ack), `Retry(error)` (nak with the
configured delay; on the consumer's last attempt the message is dead-lettered instead) or
`GiveUp(error)` (dead-letter now: no retry can help). Dead letters are
`DeadLetterEnvelope`s on `<root>.dlq.<subject>` (medmesh.jetstream.publish_dead_letter).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import nats.errors
import structlog
from nats.aio.msg import Msg
from opentelemetry import propagate, trace

from medmesh.consumers import PullConsumer
from medmesh.errors import DomainError
from medmesh.jetstream import ConsumerSpec, Topology, publish_dead_letter
from medmesh.resources import JetStream

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer(__name__)

RESULTS_READY_STATUS = "results_ready"
FETCH_TIMEOUT_S = 1.0
STOP_GRACE_S = 10.0


def results_ready_consumer(topology: Topology) -> ConsumerSpec:
    """svc_report's own durable consumer of `<root>.events.study.results_ready`."""
    return ConsumerSpec(
        "report-results-ready",
        topology.events_stream,
        topology.study_event_subject(RESULTS_READY_STATUS),
        max_deliver=5,
        backoff_s=(10.0, 30.0, 60.0),
        ack_wait_s=10.0,
    )


@dataclass(frozen=True)
class Done:
    """Processed (or nothing to do): ack."""


@dataclass(frozen=True)
class Retry:
    """Failed for a reason a later attempt may not have (database, S3, SMTP)."""

    error: str


@dataclass(frozen=True)
class GiveUp:
    """Failed for good: dead-letter now."""

    error: str


Outcome = Done | Retry | GiveUp


@dataclass(frozen=True)
class Attempt:
    """Which delivery of the message this is."""

    number: int
    last: bool


Handler = Callable[[Msg, Attempt], Awaitable[tuple[Outcome, str]]]
"""Process one message; returns the outcome and the clinic id (for the dead letter)."""


class ConsumerLoop:
    """Settles each message of one durable consumer by its handler's outcome; the fetching is
    medmesh.consumers.PullConsumer's (batches of `batch`, handled concurrently)."""

    def __init__(
        self,
        spec: ConsumerSpec,
        jetstream: JetStream,
        handler: Handler,
        *,
        retry_backoff_s: tuple[float, ...],
        batch: int = 4,
    ) -> None:
        self.spec = spec
        self._jetstream = jetstream
        self._handler = handler
        self._retry_backoff_s = retry_backoff_s
        # A stop while a batch is in hand lets it finish (and ack) within the grace period.
        self._consumer = PullConsumer(
            jetstream.js,
            spec.stream,
            spec.config(),
            self._handle_batch,
            batch_size=batch,
            fetch_timeout_s=FETCH_TIMEOUT_S,
            stop_grace_s=STOP_GRACE_S,
        )

    async def start(self, stack: AsyncExitStack) -> None:
        """Declare (idempotent) and bind the durable consumer, run until `stack` closes."""
        await self._consumer.start(stack)

    async def stop(self) -> None:
        """Stop fetching; let the batch in hand finish within a grace period."""
        await self._consumer.stop()

    async def _handle_batch(self, messages: Sequence[Msg]) -> None:
        await asyncio.gather(*(self._one(m) for m in messages))

    async def _one(self, msg: Msg) -> None:
        try:
            number = int(msg.metadata.num_delivered)
        except nats.errors.NotJSMessageError:
            number = 1
        attempt = Attempt(number, number >= self.spec.max_deliver)
        context = propagate.extract(msg.headers or {})
        with _tracer.start_as_current_span(
            f"process {msg.subject}", context=context, kind=trace.SpanKind.CONSUMER
        ):
            clinic_id = ""
            try:
                outcome, clinic_id = await self._handler(msg, attempt)
            except Exception as exc:  # an unexpected failure is retried
                if not isinstance(exc, DomainError):
                    log.exception("consumer.handler_failed", consumer=self.spec.durable)
                outcome = Retry(f"{type(exc).__name__}: {exc}")
            try:
                await self._settle(msg, outcome, attempt, clinic_id)
            except Exception as exc:  # noqa: BLE001 - JetStream redelivers after ack_wait
                log.warning("consumer.settle_failed", consumer=self.spec.durable, error=str(exc))

    async def _settle(self, msg: Msg, outcome: Outcome, attempt: Attempt, clinic_id: str) -> None:
        if isinstance(outcome, Done):
            await msg.ack()
            return
        log.info(
            "consumer.message_failed",
            consumer=self.spec.durable,
            attempt=attempt.number,
            error=outcome.error,
        )
        if isinstance(outcome, Retry) and not attempt.last:
            delays = self._retry_backoff_s
            await msg.nak(delay=delays[min(attempt.number, len(delays)) - 1])
            return
        await publish_dead_letter(
            self._jetstream.js, self._jetstream.topology, msg, outcome.error, clinic_id=clinic_id
        )
        await msg.term()
        log.warning("consumer.dead_lettered", consumer=self.spec.durable, error=outcome.error)
