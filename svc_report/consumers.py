"""svc_report's JetStream consumers: one loop, three durable consumers.

- `report-results-ready` (declared here, on the EVENTS stream): StudyResultsReady from
  svc_infer → a pending report row + a ReportJob, through the outbox.
- `report` (medmesh.jetstream.Topology.report_consumer): ReportJob → render, archive, announce.
- `deliver` (Topology.deliver_consumer): DeliveryJob → push to the clinic's MIS.

Report and delivery jobs travel on their clinic's lane (`<job subject>.<clinic>`) and are
fetched round-robin over the clinics with jobs waiting (medmesh.lanes), so one clinic's burst
of reports does not hold up another clinic's; a job on another clinic's lane is dead-lettered
unhandled.

A handler returns what to do with its message: `Done` (ack), `Retry(error)` (nak with the
configured delay; on the consumer's last attempt the message is dead-lettered instead) or
`GiveUp(error)` (dead-letter now: no retry can help). The rules, the attempt count and the
dead-letter publish (with retries) are medmesh.settle's, shared with svc_infer; a job whose
attempts ran out through ack timeouts is dead-lettered without calling the handler. A replayed
job (medmesh.settle.REPLAY_HEADER) first goes through the loop's `on_replay`, which reopens
what the failure closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import structlog
from nats.aio.msg import Msg
from opentelemetry import propagate, trace

from medmesh.consumers import PullConsumer
from medmesh.errors import DomainError
from medmesh.jetstream import ConsumerSpec, Topology, lane_token
from medmesh.lanes import LanedPullConsumer
from medmesh.resources import JetStream
from medmesh.settle import Attempt, Done, GiveUp, Outcome, Retry, Settler

__all__ = ["Attempt", "ConsumerLoop", "Done", "GiveUp", "Outcome", "Retry"]

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer(__name__)

RESULTS_READY_STATUS = "results_ready"
FETCH_TIMEOUT_S = 1.0
STOP_GRACE_S = 10.0


def results_ready_consumer(topology: Topology) -> ConsumerSpec:
    """svc_report's own durable consumer of `<root>.events.study.results_ready` (the
    deployment's attempt limit and ack wait, like every job consumer)."""
    return topology.job_consumer(
        "report-results-ready",
        topology.events_stream,
        topology.study_event_subject(RESULTS_READY_STATUS),
    )


Handler = Callable[[Msg, Attempt], Awaitable[tuple[Outcome, str]]]
"""Process one message; returns the outcome and the clinic id (for the dead letter)."""
ReplayHook = Callable[[Msg], Awaitable[None]]
"""Reopen what a replayed job's failure closed (idempotent; may raise to retry)."""


def _clinic_of(job_type: Any, msg: Msg) -> str:
    """The message's `clinic_id`, or "" when the payload does not parse."""
    try:
        return str(job_type.FromString(msg.data).clinic_id)
    except Exception:  # noqa: BLE001 - an undecodable payload has no clinic
        return ""


class ConsumerLoop:
    """Settles each message of one durable consumer by its handler's outcome; the fetching is
    medmesh.consumers.PullConsumer's (batches of `batch`, handled concurrently; `concurrency`
    batches in hand at once, each settled on its own), the settling
    medmesh.settle.Settler's. `job_type` is the payload's generated class (its `clinic_id`
    labels the dead letter of a job whose attempts ran out)."""

    def __init__(
        self,
        spec: ConsumerSpec,
        jetstream: JetStream,
        handler: Handler,
        *,
        job_type: Any,
        retry_backoff_s: tuple[float, ...],
        on_replay: ReplayHook | None = None,
        batch: int = 4,
        concurrency: int = 1,
        settler: Settler | None = None,
    ) -> None:
        self.spec = spec
        self._handler = handler
        self._job_type = job_type
        self._on_replay = on_replay
        self._settler = settler or Settler(jetstream, spec, retry_backoff_s)
        self._topology = jetstream.topology
        # A stop while a batch is in hand lets it finish (and ack) within the grace period.
        options: dict[str, Any] = {
            "batch_size": batch,
            "concurrency": concurrency,
            "fetch_timeout_s": FETCH_TIMEOUT_S,
            "stop_grace_s": STOP_GRACE_S,
        }
        self._consumer: PullConsumer
        if spec.filter_subject in self._topology.laned_subjects:  # fair: clinic lanes
            self._consumer = LanedPullConsumer(
                jetstream.nc, jetstream.js, self._topology, spec, self._handle_batch, **options
            )
        else:
            self._consumer = PullConsumer(
                jetstream.js, spec.stream, spec.config(), self._handle_batch, **options
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
        attempt = self._settler.attempt(msg)
        context = propagate.extract(msg.headers or {})
        with _tracer.start_as_current_span(
            f"process {msg.subject}", context=context, kind=trace.SpanKind.CONSUMER
        ):
            try:
                if attempt.exhausted:
                    await self._settler.dead_letter(
                        msg,
                        self._settler.ran_out(attempt),
                        attempt,
                        clinic_id=_clinic_of(self._job_type, msg),
                    )
                    return
                outcome, clinic_id = await self._run(msg, attempt)
                await self._settler.settle(msg, outcome, attempt, clinic_id=clinic_id)
            except Exception as exc:  # noqa: BLE001 - JetStream redelivers after ack_wait
                log.warning("consumer.settle_failed", consumer=self.spec.durable, error=str(exc))

    async def _run(self, msg: Msg, attempt: Attempt) -> tuple[Outcome, str]:
        lane = self._topology.lane_of(msg.subject)
        clinic_id = _clinic_of(self._job_type, msg)
        if lane and lane != lane_token(clinic_id):  # forged or misrouted: never handled
            misrouted = f"a job of clinic {clinic_id!r} arrived on the lane of {lane!r}"
            return GiveUp(misrouted), clinic_id
        try:
            if attempt.replay_of and self._on_replay is not None:
                await self._on_replay(msg)
            return await self._handler(msg, attempt)
        except Exception as exc:  # an unexpected failure is retried
            if not isinstance(exc, DomainError):
                log.exception("consumer.handler_failed", consumer=self.spec.durable)
            return Retry(f"{type(exc).__name__}: {exc}"), _clinic_of(self._job_type, msg)
