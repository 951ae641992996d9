"""The JetStream workers: durable pull consumers of image and text inference jobs.

Each consumer fetches micro-batches (up to `batch_size` jobs, or whatever arrived within
`batch_wait_ms` of the first), routes every study to its model version (sticky per study),
skips jobs whose file + version already has a result (a redelivery after a lost ack), sends
ONE Predict per version, and commits results with their events before acking. Up to
`concurrency` batches are in flight, so one batch's downloads and preprocessing overlap the
model server's work on another.

Failures are per job and settled by medmesh.settle (the rules every consumer shares): an
attempt that fails is counted and nak'ed with a delay (`retry_backoff_s`); the failed attempt
that reaches the consumer's `max_attempts` (MEDMESH_JOB_MAX_ATTEMPTS) is wrapped in a
dead-letter envelope, published on `<root>.dlq.<subject>` (retried) and terminated. A payload
that is not an InferenceJob at all is dead-lettered at once: no retry can fix it. A job
delivered again after its last attempt never settled (a worker killed mid-batch, or stalled
past the ack wait) is dead-lettered before any work.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import datetime

import structlog
from nats.aio.msg import Msg
from opentelemetry import context as otel_context
from opentelemetry import trace

from gen.medmesh.common.v1 import AnalysisKind, FileKind
from gen.medmesh.events.v1 import InferenceJob
from medmesh.db import Database
from medmesh.errors import DomainError
from medmesh.jetstream import ConsumerSpec, Topology, lane_token
from medmesh.lanes import LanedPullConsumer
from medmesh.objects import RAW_IMAGES
from medmesh.resources import JetStream
from medmesh.settle import Attempt, Settler
from medmesh.telemetry import message_context, producer_links, trace_headers
from svc_infer import dead_letter_store, metrics, store
from svc_infer.config import InferConfig
from svc_infer.pipeline import Delivery, ImagePipeline, Outcome, TextPipeline, describe, queue_ms
from svc_infer.routing import Registry
from svc_infer.writer import ResultWriter

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer(__name__)

IDLE_FETCH_TIMEOUT_S = 1.0
STOP_GRACE_S = 10.0
_KINDS: dict[AnalysisKind, frozenset[FileKind]] = {
    AnalysisKind.IMAGE_CLASSIFICATION: frozenset(
        {FileKind.IMAGE_PNG, FileKind.IMAGE_JPEG, FileKind.IMAGE_DICOM}
    ),
    AnalysisKind.TEXT_ANALYSIS: frozenset({FileKind.TEXT_NOTE}),
}


def misrouted(
    job: InferenceJob, subject: str, topology: Topology, raw_buckets: frozenset[str]
) -> str:
    """Why the job must not be worked on (a forged or misrouted message), or "".

    Checked before anything is read: the object must be in the raw images bucket and its key
    under the job's clinic (`<clinic>/...`: ingest keys accepted files so; the staging area
    of presigned uploads, `staging/...`, is never a job's object), and a job from a clinic
    lane must be that clinic's. Dead-lettered at once: no retry changes the message.
    """
    lane = topology.lane_of(subject)
    if lane and lane != lane_token(job.clinic_id):
        return f"a job of clinic {job.clinic_id!r} arrived on the lane of {lane!r}"
    if job.bucket not in raw_buckets:
        return f"bucket {job.bucket!r} is not the raw images bucket"
    segments = job.object_key.split("/")
    if (
        len(segments) < 2
        or segments[0] != job.clinic_id
        or any(s in {"", ".", ".."} for s in segments[1:])
    ):
        return f"object key {job.object_key!r} is not under clinic {job.clinic_id!r}"
    return ""


class JobConsumer:
    """One durable consumer (image or text) and its batch loop."""

    def __init__(
        self,
        *,
        spec: ConsumerSpec,
        kind: AnalysisKind,
        model_name: str,
        jetstream: JetStream,
        database: Database,
        registry: Registry,
        pipeline: ImagePipeline | TextPipeline,
        writer: ResultWriter,
        config: InferConfig,
        raw_bucket: str = "",
    ) -> None:
        """`raw_bucket` is the real name of the raw images bucket (jobs name it so)."""
        self.spec = spec
        self._kind = kind
        self._model_name = model_name
        self._jetstream = jetstream
        self._database = database
        self._registry = registry
        self._pipeline = pipeline
        self._writer = writer
        self._config = config
        self._settler = Settler(jetstream, spec, config.retry_backoff_s)
        self._consumer: LanedPullConsumer | None = None
        self._raw_buckets = frozenset({"", RAW_IMAGES, raw_bucket or RAW_IMAGES})
        self.batches_handled = 0

    @property
    def consumer(self) -> LanedPullConsumer | None:
        """The running fetch loop (tests look at its lanes)."""
        return self._consumer

    async def start(self, stack: AsyncExitStack) -> None:
        """Bind to the durable consumers (the topology declared the job subject's; each clinic
        lane's is declared when first seen) and run the fair pull loop (medmesh.lanes) until
        the stack closes: micro-batches of up to `batch_size` jobs filled for
        `batch_wait_ms`, shared among the clinics with waiting jobs, `concurrency` of them
        in flight, each given STOP_GRACE_S to settle at shutdown."""
        self._consumer = LanedPullConsumer(
            self._jetstream.nc,
            self._jetstream.js,
            self._jetstream.topology,
            self.spec,
            self._handle,
            name=self.spec.durable,
            batch_size=self._config.batch_size,
            fetch_timeout_s=IDLE_FETCH_TIMEOUT_S,
            fill_wait_s=self._config.batch_wait_ms / 1000.0,
            concurrency=self._config.concurrency,
            stop_grace_s=STOP_GRACE_S,
            refresh_s=self._config.lane_refresh_s,
        )
        await self._consumer.start(stack)
        log.info("consumer.started", consumer=self.spec.durable, model=self._model_name)

    async def stop(self) -> None:
        """Stop fetching, let in-flight batches finish (ack) within the grace period."""
        if self._consumer is not None:
            await self._consumer.stop()

    async def _handle(self, messages: Sequence[Msg]) -> None:
        """One micro-batch under a batch span linked to every job's producer; each job also
        gets a `process` span in its producer's trace (ended once the job is settled)."""
        attributes = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": self.spec.filter_subject,
            "messaging.consumer.group.name": self.spec.durable,
        }
        with _tracer.start_as_current_span(
            f"process {self.spec.filter_subject} batch",
            kind=trace.SpanKind.CONSUMER,
            links=producer_links(m.headers for m in messages),
            attributes={**attributes, "messaging.batch.message_count": len(messages)},
        ) as batch:
            spans = [
                _tracer.start_span(
                    f"process {m.subject}",
                    context=message_context(m.headers),
                    kind=trace.SpanKind.CONSUMER,
                    links=[trace.Link(batch.get_span_context())],
                    attributes=attributes,
                )
                for m in messages
            ]
            try:
                await self._handle_batch(messages, spans)
            finally:
                for span in spans:
                    span.end()

    async def _handle_batch(self, messages: Sequence[Msg], spans: Sequence[trace.Span]) -> None:
        started = time.time()
        deliveries: list[Delivery] = []
        span_of = {id(msg): span for msg, span in zip(messages, spans, strict=True)}
        for msg, span in zip(messages, spans, strict=True):
            delivery = await self._accept(msg, started)
            if delivery is not None:
                delivery.trace_headers = trace_headers(span)
                span.set_attribute("medmesh.study_id", delivery.job.study_id)
                span.set_attribute("medmesh.job_id", delivery.job.job_id)
                deliveries.append(delivery)
        if self._consumer is not None:  # every clinic lane's jobs not delivered yet
            metrics.QUEUE_PENDING.labels(self.spec.durable).set(self._consumer.waiting)
        if not deliveries:
            return
        try:
            outcomes = await self._process(deliveries)
        except Exception as exc:
            if not isinstance(exc, DomainError):
                log.exception("consumer.batch_failed", consumer=self.spec.durable)
            outcomes = [Outcome(d, error=describe(exc)) for d in deliveries]
        await self._settle(outcomes, span_of)
        self.batches_handled += 1

    async def _accept(self, msg: Msg, started: float) -> Delivery | None:
        """Decode a job; a payload that can never be processed is dead-lettered now."""
        try:
            job = InferenceJob.FromString(msg.data)
            problem = "" if job.kind in _KINDS[self._kind] else f"kind {job.kind!r} is wrong here"
            if not (job.job_id and job.study_id and job.file_id and job.clinic_id):
                problem = problem or "job_id, clinic_id, study_id and file_id are required"
            problem = problem or misrouted(
                job, msg.subject, self._jetstream.topology, self._raw_buckets
            )
        except Exception as exc:  # noqa: BLE001 - any parse failure means "not a job"
            job, problem = InferenceJob(), f"undecodable InferenceJob: {exc}"
        if problem:
            await self._dead_letter(msg, job, problem, None, self._settler.attempt(msg))
            return None
        delivery = Delivery(msg, job, int(msg.metadata.num_delivered), started)
        metrics.QUEUE_WAIT_SECONDS.labels(self.spec.durable).observe(queue_ms(delivery) / 1e3)
        return delivery

    async def _process(self, deliveries: list[Delivery]) -> list[Outcome]:
        async with self._database.transaction() as conn:
            await store.note_jobs_seen(
                conn,
                [
                    store.SeenJob(
                        d.job.clinic_id,
                        d.job.study_id,
                        d.job.file_id,
                        int(d.job.kind),
                        d.job.job_id,
                        d.job.study_file_count,
                    )
                    for d in deliveries
                ],
            )
        model, assignments = await self._registry.route(
            self._model_name, self._kind, [(d.job.study_id, d.job.clinic_id) for d in deliveries]
        )
        for delivery in deliveries:
            assignment = assignments[delivery.job.study_id]
            delivery.version, delivery.arm = assignment.version, assignment.arm
        async with self._database.read_connection() as conn:
            done = await store.existing_results(
                conn, [(d.job.file_id, model.name, d.version) for d in deliveries]
            )
        outcomes: list[Outcome] = []
        by_version: dict[int, list[Delivery]] = defaultdict(list)
        for delivery in deliveries:
            attempt = self._settler.attempt(delivery.msg)
            if (delivery.job.file_id, model.name, delivery.version) in done:
                outcomes.append(Outcome(delivery))  # processed before; the ack was lost
            elif attempt.exhausted:  # its last attempt never settled: dead-letter, no more work
                error = self._settler.ran_out(attempt)
                outcomes.append(Outcome(delivery, error=error, permanent=True))
            else:
                by_version[delivery.version].append(delivery)
        for version, group in sorted(by_version.items()):
            try:
                outcomes += await self._pipeline.run(model, version, group)
            except Exception as exc:  # noqa: BLE001 - the group fails; other versions go on
                log.warning(
                    "consumer.predict_failed",
                    model=model.name,
                    version=version,
                    error=describe(exc),
                )
                outcomes += [Outcome(d, error=describe(exc)) for d in group]
        drafts = [o.draft for o in outcomes if o.draft is not None]
        try:
            await self._writer.commit(
                drafts, trace_headers={d.job.job_id: d.trace_headers for d in deliveries}
            )
        except Exception as exc:  # noqa: BLE001 - nothing was stored: retry every draft
            log.warning("consumer.commit_failed", error=describe(exc))
            outcomes = [
                Outcome(o.delivery, error=describe(exc)) if o.draft is not None else o
                for o in outcomes
            ]
        return outcomes

    async def _settle(self, outcomes: Sequence[Outcome], span_of: Mapping[int, trace.Span]) -> None:
        """Ack, retry or dead-letter each job in its own trace (its `process` span is current:
        a dead letter and the failure it announces stay in the study's trace)."""
        for outcome in outcomes:
            span = span_of[id(outcome.delivery.msg)]
            if outcome.error:
                span.set_status(trace.StatusCode.ERROR, outcome.error[:200])
            token = otel_context.attach(trace.set_span_in_context(span))
            try:
                if outcome.error:
                    await self._fail(outcome.delivery, outcome.error, final=outcome.permanent)
                else:
                    await outcome.delivery.msg.ack()
            except Exception as exc:  # noqa: BLE001 - JetStream redelivers after ack_wait
                log.warning(
                    "consumer.settle_failed", job=outcome.delivery.job.job_id, error=str(exc)
                )
            finally:
                otel_context.detach(token)

    async def _fail(self, delivery: Delivery, error: str, *, final: bool = False) -> None:
        """Count the failure; retry later, or dead-letter after the last attempt (at once when
        `final`: e.g. an image over the decode budget, which no retry can shrink)."""
        attempt = self._settler.attempt(delivery.msg)
        metrics.JOB_FAILURES.labels(self.spec.durable).inc()
        first_failure: datetime | None = None
        try:
            async with self._database.transaction() as conn:
                first_failure = await dead_letter_store.record_failure(
                    conn,
                    delivery.job.job_id,
                    delivery.job.clinic_id,
                    min(attempt.number, attempt.max_attempts),
                    error,
                )
        except Exception as exc:  # noqa: BLE001 - counting is best effort; the retry is not
            log.warning("consumer.failure_not_recorded", error=str(exc))
        log.info(
            "consumer.job_failed",
            consumer=self.spec.durable,
            job=delivery.job.job_id,
            attempt=delivery.attempt,
            error=error,
        )
        if final or attempt.last:
            await self._dead_letter(delivery.msg, delivery.job, error, first_failure, attempt)
            return
        await delivery.msg.nak(delay=self._settler.retry_delay_s(attempt))

    async def _dead_letter(
        self,
        msg: Msg,
        job: InferenceJob,
        error: str,
        first_failure: datetime | None,
        attempt: Attempt,
    ) -> None:
        if await self._settler.dead_letter(
            msg, error, attempt, clinic_id=job.clinic_id, first_failure_time=first_failure
        ):
            metrics.DEAD_LETTERS.labels(self.spec.durable).inc()
