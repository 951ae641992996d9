"""JetStream on the way in: other services' events update study status (a durable consumer),
and the StudyStatusChanged events fan out to the WatchStudy streams of this process.

The durable consumer (`ingest-status`) is at-least-once: each event is applied in one
transaction with a `processed_events` row, so a redelivery changes nothing. The fan-out is one
ordered, ephemeral JetStream subscription per process starting at new messages; each watcher
registers a queue for its study before it reads the current state, so no change is missed
between the two.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace

from gen.medmesh.events.v1 import InferenceFailed, ReportReady, ResultReady, StudyStatusChanged
from medmesh.consumers import PullConsumer
from medmesh.db import Database
from medmesh.jetstream import decode_message
from svc_ingest import store
from svc_ingest.status import StudyEvents

log = structlog.get_logger(__name__)
STATUS_CONSUMER = "ingest-status"
_tracer = trace.get_tracer(__name__)


class StatusConsumer:
    """Applies ResultReady, InferenceFailed and ReportReady to the studies they name."""

    def __init__(self, database: Database, js: JetStreamContext, events: StudyEvents) -> None:
        self._database = database
        self._events = events
        topology = events.topology
        self._handlers: dict[str, tuple[type[Any], Callable[..., Awaitable[None]]]] = {
            topology.result_ready_subject: (ResultReady, events.on_result_ready),
            topology.result_failed_subject: (InferenceFailed, events.on_inference_failed),
            topology.report_ready_subject: (ReportReady, events.on_report_ready),
        }
        self._consumer = PullConsumer(
            js,
            topology.events_stream,
            ConsumerConfig(
                durable_name=STATUS_CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30,
                max_deliver=10,
                filter_subjects=sorted(self._handlers),
            ),
            self._apply_batch,
            batch_size=32,
        )

    async def start(self, stack: AsyncExitStack) -> None:
        """Declare the durable consumer and start pulling; stopped by `stack`."""
        await self._consumer.start(stack)

    async def stop(self) -> None:
        """Stop pulling; unacked events are redelivered to the next start."""
        await self._consumer.stop()

    async def _apply_batch(self, messages: Sequence[Msg]) -> None:
        for msg in messages:
            await self._apply(msg)

    async def _apply(self, msg: Msg) -> None:
        cls, handler = self._handlers.get(msg.subject, (None, None))
        if cls is None or handler is None:
            await msg.ack()
            return
        event, context = decode_message(msg, cls)
        with _tracer.start_as_current_span(
            f"process {msg.subject}", context=context, kind=trace.SpanKind.CONSUMER
        ):
            try:
                async with self._database.transaction() as conn:
                    if await store.mark_event_processed(conn, event.event_id or msg.reply):
                        await handler(conn, event)
            except Exception as exc:  # noqa: BLE001 - redelivered after ack_wait
                log.warning("status event failed", subject=msg.subject, error=str(exc))
                with contextlib.suppress(Exception):
                    await msg.nak(delay=2.0)
                return
        await msg.ack()


class StatusHub:
    """Fans StudyStatusChanged events out to this process's WatchStudy streams."""

    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Queue[StudyStatusChanged | None]]] = defaultdict(set)
        self._subscription: Any = None

    async def start(self, js: JetStreamContext, subject: str, stack: AsyncExitStack) -> None:
        """Subscribe (ordered consumer, new messages only); unsubscribed by `stack`."""
        self._subscription = await js.subscribe(
            subject, cb=self._on_message, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        )
        stack.push_async_callback(self.close)

    async def _on_message(self, msg: Msg) -> None:
        try:
            event = StudyStatusChanged.FromString(msg.data)
        except Exception:  # noqa: BLE001 - a malformed event must not stop the fan-out
            log.warning("malformed StudyStatusChanged ignored")
            return
        for queue in list(self._watchers.get(event.study_id, ())):
            queue.put_nowait(event)

    @contextlib.contextmanager
    def watch(self, study_id: str) -> Any:
        """Register a queue for one study's events while the context is open."""
        queue: asyncio.Queue[StudyStatusChanged | None] = asyncio.Queue()
        self._watchers[study_id].add(queue)
        try:
            yield queue
        finally:
            self._watchers[study_id].discard(queue)
            if not self._watchers[study_id]:
                del self._watchers[study_id]

    async def close(self) -> None:
        """End every watch (they see None) and unsubscribe."""
        for queues in list(self._watchers.values()):
            for queue in queues:
                queue.put_nowait(None)
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
