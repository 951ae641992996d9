"""The JetStream topology (streams, subjects, durable consumers), declared once, and the
publish / decode / dead-letter helpers every service uses.

Why one place: producers (svc_ingest's outbox relay), consumers (svc_infer, svc_report) and the
dead-letter RPCs must agree on names and limits; a stream declared twice drifts. Tests pass a
unique `Topology(subject_root=..., stream_prefix=...)` so that they never share a stream.

Payloads are betterproto2 messages (`bytes(message)` / `Cls.FromString(data)`); the trace
context travels in NATS headers (W3C `traceparent`), so a job's consumer span joins the trace
of the request that created the job. A dead letter is a `medmesh.events.v1.DeadLetterEnvelope`
(the contract's wire format for the DLQ), the only generated type this module names.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol, Self, TypeVar

import nats
import nats.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NoStreamResponseError, ServiceUnavailableError
from opentelemetry import propagate, trace
from opentelemetry.context import Context

from gen.medmesh.events.v1 import DeadLetterEnvelope
from medmesh.errors import DependencyUnavailable
from medmesh.transport import client_tls_context, redact_url

log = structlog.get_logger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
# Set on dead letters so a listing can filter by clinic without parsing every envelope.
CLINIC_ID_HEADER = "Medmesh-Clinic-Id"
# JetStream's "stream name already in use with a different configuration".
_ERR_STREAM_NAME_IN_USE = 10058
# Publish failures that mean "JetStream cannot take it now", as opposed to a bad request.
_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    NoStreamResponseError,
    ServiceUnavailableError,
)


class ProtoMessage(Protocol):
    """What publish/decode need of a message: any betterproto2 class from `gen/` fits."""

    def __bytes__(self) -> bytes: ...

    @classmethod
    def FromString(cls, data: bytes) -> Self: ...  # noqa: N802 - betterproto2's name


M = TypeVar("M", bound=ProtoMessage)

# A lane token is a clinic id as it is when it is a plain subject token (svc_auth's clinic ids
# always are), else `_h` + a hash of it (a `_` start: no plain id can be one).
_LANE_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}|_h[0-9a-f]{32}")
_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


def lane_token(clinic_id: str) -> str:
    """The subject token of a clinic's lanes (and the suffix of their consumers' names)."""
    if _PLAIN_TOKEN.fullmatch(clinic_id):
        return clinic_id
    return "_h" + hashlib.sha256(clinic_id.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class RawPayload:
    """Already-serialised message bytes, shaped like a generated message for publish_message
    (the outbox relay's rows, a replayed dead letter's payload)."""

    data: bytes

    def __bytes__(self) -> bytes:
        return self.data

    @classmethod
    def FromString(cls, data: bytes) -> Self:  # noqa: N802 - betterproto2's name
        return cls(data)


DEFAULT_MAX_ATTEMPTS = 4
"""How many times a failing job is tried before it is dead-lettered: once, then retried three
times (the seed's "max retries = 3"). MEDMESH_JOB_MAX_ATTEMPTS sets it for every consumer."""
DEFAULT_ACK_WAIT_S = 30.0
"""How long a delivered job may go without an ack or an `in_progress` heartbeat before the
server hands it out again (MEDMESH_JOB_ACK_WAIT_S)."""


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer of jobs: explicit ack, `max_attempts` attempts per job.

    The attempt limit is the *consumer's* (medmesh.settle), not the server's: the server's
    `max_deliver` is unlimited, so a job whose deliveries run out through ack timeouts (its
    worker was killed or stalled) is never dropped by the server; the delivery after the last
    attempt is dead-lettered by whichever worker receives it, without processing it.

    `backoff_s` (server-side redelivery delays after an ack timeout) is empty by default: with
    a BackOff list nats-server also stretches `nak(delay)` redeliveries, so the retry delays a
    service configures would not be the ones it gets. When set, JetStream replaces `ack_wait`
    with `backoff[0]`, so the two are required to agree here rather than drift silently.
    """

    durable: str
    stream: str
    filter_subject: str
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    ack_wait_s: float = DEFAULT_ACK_WAIT_S
    max_ack_pending: int = 64
    backoff_s: tuple[float, ...] = ()
    inactive_threshold_s: float | None = None
    """Set on clinic lanes (Topology.lane_consumer): the server deletes a lane's consumer
    after this long without a fetch."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.ack_wait_s <= 0:
            raise ValueError("max_attempts must be at least 1 and ack_wait_s positive")
        if self.backoff_s and self.backoff_s[0] != self.ack_wait_s:
            raise ValueError("ack_wait_s must equal backoff_s[0]; the server enforces it")

    def config(self) -> ConsumerConfig:
        """The nats-py consumer config for this spec (`max_deliver` unlimited, see above)."""
        return ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            max_deliver=-1,
            backoff=list(self.backoff_s) or None,
            ack_wait=self.ack_wait_s,
            filter_subject=self.filter_subject,
            max_ack_pending=self.max_ack_pending,
            inactive_threshold=self.inactive_threshold_s,
        )


@dataclass(frozen=True)
class Topology:
    """Every stream, subject and durable consumer of medmesh, derived from two names."""

    subject_root: str = "medmesh"
    stream_prefix: str = "MEDMESH"
    max_age_s: float = 24 * 3600.0
    # Msg-Id de-duplication: the outbox relay may publish a row twice after a crash.
    duplicate_window_s: float = 120.0
    replicas: int = 1
    # Every job consumer's attempt limit and ack wait (MEDMESH_JOB_MAX_ATTEMPTS / _ACK_WAIT_S).
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    ack_wait_s: float = DEFAULT_ACK_WAIT_S

    # Streams.
    @property
    def jobs_stream(self) -> str:
        """Stream of work items (`<root>.jobs.>`)."""
        return f"{self.stream_prefix}_JOBS"

    @property
    def events_stream(self) -> str:
        """Stream of facts that happened (`<root>.events.>`)."""
        return f"{self.stream_prefix}_EVENTS"

    @property
    def dlq_stream(self) -> str:
        """Stream of jobs that failed their last attempt (`<root>.dlq.>`)."""
        return f"{self.stream_prefix}_DLQ"

    # Subjects.
    def subject(self, tail: str) -> str:
        """`<root>.<tail>`."""
        return f"{self.subject_root}.{tail}"

    @property
    def infer_image_subject(self) -> str:
        """Jobs for image inference (ResNet-50)."""
        return self.subject("jobs.infer.image")

    @property
    def infer_text_subject(self) -> str:
        """Jobs for text inference (BERT-family encoder)."""
        return self.subject("jobs.infer.text")

    @property
    def report_subject(self) -> str:
        """Jobs that build and archive a report."""
        return self.subject("jobs.report")

    @property
    def deliver_subject(self) -> str:
        """Jobs that push a report to the clinic's MIS."""
        return self.subject("jobs.deliver")

    # Clinic lanes (fair scheduling, medmesh.consumers.LanedPullConsumer).
    @property
    def laned_subjects(self) -> tuple[str, ...]:
        """Job subjects published per clinic: `<job subject>.<clinic token>`."""
        return (
            self.infer_image_subject,
            self.infer_text_subject,
            self.report_subject,
            self.deliver_subject,
        )

    def lane_subject(self, job_subject: str, clinic_id: str) -> str:
        """The clinic's lane of a laned job subject (`<root>.jobs.infer.image.clinic-a`);
        producers publish there so that one clinic's flood cannot starve another's jobs."""
        if job_subject not in self.laned_subjects:
            raise ValueError(f"{job_subject!r} has no clinic lanes")
        return f"{job_subject}.{lane_token(clinic_id)}"

    def publish_subject(self, job_subject: str, clinic_id: str) -> str:
        """Where to publish a job of `clinic_id`: its lane when `job_subject` has lanes (and
        the clinic is known), else `job_subject` itself."""
        if job_subject in self.laned_subjects and clinic_id:
            return self.lane_subject(job_subject, clinic_id)
        return job_subject

    def job_subject_of(self, subject: str) -> str:
        """The job subject of a lane (`<root>.jobs.infer.image.clinic-a` → `<root>.jobs.infer.
        image`); any other subject as it is. Dead letters, listings and status changes name
        the job subject: the lane is a scheduling detail (the clinic is in the payload)."""
        base, _, token = subject.rpartition(".")
        return base if base in self.laned_subjects and _LANE_TOKEN.fullmatch(token) else subject

    def lane_of(self, subject: str) -> str:
        """The lane token of a lane subject, "" for a job subject published without one."""
        base, _, token = subject.rpartition(".")
        return token if base in self.laned_subjects and _LANE_TOKEN.fullmatch(token) else ""

    def lane_consumer(self, spec: ConsumerSpec, token: str) -> ConsumerSpec:
        """The durable consumer of one clinic lane of `spec`'s subject (`<durable>_lane_<token>`;
        base durables hold no `_`, so no lane name equals another consumer's). The server
        deletes it after `max_age_s` plus an hour without a fetch: by then every message it
        could deliver has expired, so a lane created again later starts from nothing old."""
        return replace(
            spec,
            durable=f"{spec.durable}_lane_{token}",
            filter_subject=f"{spec.filter_subject}.{token}",
            inactive_threshold_s=self.max_age_s + 3600.0,
        )

    def study_event_subject(self, status: str) -> str:
        """`<root>.events.study.<status>`; status is one lowercase token (`uploaded`)."""
        if not status or not status.replace("_", "").isalnum():
            raise ValueError(f"study status must be one subject token, got {status!r}")
        return self.subject(f"events.study.{status}")

    @property
    def result_ready_subject(self) -> str:
        """An inference result was stored."""
        return self.subject("events.result.ready")

    @property
    def result_failed_subject(self) -> str:
        """An inference job failed its last attempt (and went to the DLQ)."""
        return self.subject("events.result.failed")

    @property
    def report_ready_subject(self) -> str:
        """A report was archived and delivered."""
        return self.subject("events.report.ready")

    def dlq_subject(self, original_subject: str) -> str:
        """`<root>.dlq.<tail>` for `<root>.<tail>`: the failed job keeps its own name."""
        root = f"{self.subject_root}."
        if not original_subject.startswith(root):
            raise ValueError(f"{original_subject!r} is not under {root!r}")
        return self.subject(f"dlq.{original_subject.removeprefix(root)}")

    # Declarations.
    def stream_configs(self) -> list[StreamConfig]:
        """JOBS, EVENTS and DLQ: file storage, limits retention, 24 h, duplicate window."""
        return [
            StreamConfig(
                name=name,
                subjects=[self.subject(f"{kind}.>")],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                discard=DiscardPolicy.OLD,
                max_age=self.max_age_s,
                duplicate_window=self.duplicate_window_s,
                num_replicas=self.replicas,
            )
            for name, kind in (
                (self.jobs_stream, "jobs"),
                (self.events_stream, "events"),
                (self.dlq_stream, "dlq"),
            )
        ]

    def job_consumer(self, durable: str, stream: str, filter_subject: str) -> ConsumerSpec:
        """A job consumer with the deployment's one attempt limit and ack wait."""
        return ConsumerSpec(
            durable,
            stream,
            filter_subject,
            max_attempts=self.max_attempts,
            ack_wait_s=self.ack_wait_s,
        )

    @property
    def infer_image_consumer(self) -> ConsumerSpec:
        """svc_infer's consumer of image jobs."""
        return self.job_consumer("infer-image", self.jobs_stream, self.infer_image_subject)

    @property
    def infer_text_consumer(self) -> ConsumerSpec:
        """svc_infer's consumer of text jobs."""
        return self.job_consumer("infer-text", self.jobs_stream, self.infer_text_subject)

    @property
    def report_consumer(self) -> ConsumerSpec:
        """svc_report's consumer of report jobs."""
        return self.job_consumer("report", self.jobs_stream, self.report_subject)

    @property
    def deliver_consumer(self) -> ConsumerSpec:
        """svc_report's consumer of MIS delivery jobs."""
        return self.job_consumer("deliver", self.jobs_stream, self.deliver_subject)

    def replayable_subjects(self) -> frozenset[str]:
        """Subjects whose dead letters can be replayed: every job subject, and the
        `study.results_ready` event (svc_report's `report-results-ready` consumer is its only
        reader, so republishing it reaches exactly the consumer that failed it)."""
        return frozenset(
            [spec.filter_subject for spec in self.consumer_specs()]
            + [self.study_event_subject("results_ready")]
        )

    def consumer_specs(self) -> list[ConsumerSpec]:
        """Every durable consumer."""
        return [
            self.infer_image_consumer,
            self.infer_text_consumer,
            self.report_consumer,
            self.deliver_consumer,
        ]


async def ensure_topology(js: JetStreamContext, topology: Topology) -> None:
    """Create or update every stream and consumer; safe to run at every service start-up."""
    for config in topology.stream_configs():
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            # add_stream accepts an identical config but rejects a changed one.
            if exc.err_code != _ERR_STREAM_NAME_IN_USE:
                raise
            await js.update_stream(config)
    for spec in topology.consumer_specs():
        # The durable-create API creates, accepts an identical config, and applies allowed
        # changes (backoff, max_deliver, ...) to an existing consumer.
        await js.add_consumer(spec.stream, spec.config())


async def connect_nats(
    url: str,
    *,
    name: str,
    connect_timeout_s: float = 5.0,
    ca_file: str = "",
    creds_file: str = "",
) -> tuple[NatsClient, JetStreamContext]:
    """Connect for a long-running service: reconnect forever once connected, but give up on
    the first connection after `connect_timeout_s` with DependencyUnavailable("nats").

    nats-py with max_reconnect_attempts=-1 would otherwise retry the *initial* connect forever.
    Credentials: `nats://USER:PASSWORD@host` (or a token) in the URL, or `creds_file` (a
    `.creds` file: user JWT and NKey seed). TLS: a `tls://` URL, or any server that requires
    TLS, is verified against `ca_file` (PEM) or the system's CAs, host name included.
    """
    nc = NatsClient()
    where = redact_url(url)
    security: dict[str, object] = {}
    if ca_file or url.startswith("tls://"):
        security["tls"] = client_tls_context(ca_file)
    if creds_file:
        security["user_credentials"] = creds_file

    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        error = str(exc) or type(exc).__name__
        if error not in errors and len(errors) < 4:
            errors.append(error)
        log.warning("nats.error", error=error, connection=name)

    async def on_disconnected() -> None:
        log.warning("nats.disconnected", connection=name)

    async def on_reconnected() -> None:
        server = nc.connected_url.geturl() if nc.connected_url else ""
        log.info("nats.reconnected", connection=name, server=redact_url(server))

    try:
        async with asyncio.timeout(connect_timeout_s):
            await nc.connect(
                servers=[url],
                name=name,
                connect_timeout=max(1, int(connect_timeout_s)),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                ping_interval=20,
                max_outstanding_pings=3,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                **security,  # type: ignore[arg-type]
            )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        await nc.close()
        # A refused password or certificate shows as a timeout (nats-py retries the first
        # connect); the errors it reported on the way say why.
        reason = "; ".join([str(exc) or type(exc).__name__, *errors])
        raise DependencyUnavailable("nats", f"{where}: {reason}") from exc
    return nc, nc.jetstream()


async def publish_message(
    js: JetStreamContext,
    subject: str,
    message: ProtoMessage,
    *,
    msg_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> PubAck:
    """Publish `message` under a producer span; the trace context and `Nats-Msg-Id` (for
    de-duplication within the stream's window) go in the headers.

    Raises DependencyUnavailable("nats") when JetStream does not acknowledge in time, no
    stream holds `subject`, or the connection is closed.
    """
    tracer = trace.get_tracer(__name__)
    with tracer.start_as_current_span(
        f"send {subject}",
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "send",
            "messaging.destination.name": subject,
            **({"messaging.message.id": msg_id} if msg_id else {}),
        },
    ) as span:
        all_headers = dict(headers or {})
        propagate.inject(all_headers)
        if msg_id is not None:
            all_headers[MSG_ID_HEADER] = msg_id
        try:
            ack = await js.publish(subject, bytes(message), headers=all_headers)
        except _UNAVAILABLE_ERRORS as exc:
            raise DependencyUnavailable(
                "nats", f"publish to {subject}: {exc or type(exc).__name__}"
            ) from exc
        span.set_attribute("messaging.nats.stream_sequence", ack.seq)
        span.set_attribute("messaging.nats.duplicate", bool(ack.duplicate))
        return ack


def decode_message(msg: Msg, cls: type[M]) -> tuple[M, Context]:
    """Parse the payload as `cls` and extract the producer's trace context from the headers;
    start the consumer span with `tracer.start_as_current_span(..., context=ctx)`."""
    return cls.FromString(msg.data), propagate.extract(msg.headers or {})


async def publish_dead_letter(
    js: JetStreamContext,
    topology: Topology,
    msg: Msg,
    error: str,
    *,
    clinic_id: str = "",
    first_failure_time: datetime | None = None,
    attempts: int | None = None,
) -> PubAck:
    """Wrap a job that failed its last attempt in a `DeadLetterEnvelope` (payload, original
    subject, delivery count, error, headers) and publish it on `<root>.dlq.<tail>`.

    `clinic_id` comes from the decoded job (the payload is opaque here); listing dead letters
    filters by it. A job from a clinic lane is filed under its job subject
    (`Topology.job_subject_of`): listings, replays and the DLQ subject name the kind of job.
    `attempts` defaults to the delivery count (a job whose attempts ran out
    through ack timeouts is dead-lettered on the delivery after its last attempt). The
    envelope's Msg-Id is derived from the job's stream sequence, so a consumer that crashes
    between dead-lettering and acking does not dead-letter it twice.
    """
    headers = dict(msg.headers or {})
    try:
        meta = msg.metadata
        delivered, dedup_id = meta.num_delivered, f"dlq:{meta.stream}:{meta.sequence.stream}"
    except nats.errors.NotJSMessageError:
        delivered, dedup_id = 1, None
    attempts = delivered if attempts is None else attempts
    now = datetime.now(UTC)
    subject = topology.job_subject_of(msg.subject)
    envelope = DeadLetterEnvelope(
        original_subject=subject,
        payload=msg.data,
        error=error,
        attempts=attempts,
        first_failure_time=first_failure_time or now,
        last_failure_time=now,
        msg_id=headers.get(MSG_ID_HEADER, ""),
        clinic_id=clinic_id,
        headers=headers,
    )
    return await publish_message(
        js,
        topology.dlq_subject(subject),
        envelope,
        msg_id=dedup_id,
        headers={CLINIC_ID_HEADER: clinic_id} if clinic_id else None,
    )
