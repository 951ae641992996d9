"""Queue depth and message rates on `/metrics`, as JetStream itself counts them: the consumer
info and stream info of every durable consumer a process pulls from, polled in the
background (`ConsumerInfoPoller`, started by medmesh.consumers.PullConsumer) and exported at
scrape time. A consumer's clinic lanes (medmesh.lanes: durables `<durable>_lane_<clinic>`)
are reported with it: `consumer` is the real durable, `group` the job consumer it belongs to.

Rates come from the server's sequence numbers: `rate(medmesh_jetstream_stream_published_total)`
is what was published to a stream, `rate(medmesh_jetstream_consumer_delivered_total)` what a
consumer was handed (redeliveries included), `..._acked_total` its ack floor's progress.
A snapshot that could not be refreshed is dropped, so a stalled poll shows as absent series
rather than as a frozen queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import structlog
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, StreamInfo
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)

POLL_INTERVAL_S = 10.0


@dataclass(frozen=True)
class _Snapshot:
    consumers: tuple[ConsumerInfo, ...]
    stream: StreamInfo


class JetStreamCollector(Collector):
    """The latest consumer/stream info per (stream, consumer), exported when scraped."""

    def __init__(self) -> None:
        self._snapshots: dict[tuple[str, str], _Snapshot] = {}
        self._lock = threading.Lock()

    def update(self, stream: str, consumer: str, snapshot: _Snapshot | None) -> None:
        """Replace (or with None drop) the snapshot of one consumer."""
        with self._lock:
            if snapshot is None:
                self._snapshots.pop((stream, consumer), None)
            else:
                self._snapshots[(stream, consumer)] = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with self._lock:
            snapshots = dict(self._snapshots)
        labels = ["stream", "consumer", "group"]
        pending = GaugeMetricFamily(
            "medmesh_jetstream_consumer_pending",
            "Messages in the stream not yet delivered to this consumer (the queue depth).",
            labels=labels,
        )
        ack_pending = GaugeMetricFamily(
            "medmesh_jetstream_consumer_ack_pending",
            "Messages delivered to this consumer and not yet acknowledged (in progress).",
            labels=labels,
        )
        redelivered = GaugeMetricFamily(
            "medmesh_jetstream_consumer_redelivered",
            "Messages of this consumer delivered more than once and still unacknowledged.",
            labels=labels,
        )
        waiting = GaugeMetricFamily(
            "medmesh_jetstream_consumer_waiting",
            "Pull requests waiting for messages (idle workers).",
            labels=labels,
        )
        delivered = CounterMetricFamily(
            "medmesh_jetstream_consumer_delivered",
            "Deliveries to this consumer, redeliveries included (consumer sequence).",
            labels=labels,
        )
        acked = CounterMetricFamily(
            "medmesh_jetstream_consumer_acked",
            "Deliveries acknowledged in order (the consumer's ack floor).",
            labels=labels,
        )
        stream_messages = GaugeMetricFamily(
            "medmesh_jetstream_stream_messages",
            "Messages stored in the stream now.",
            labels=["stream"],
        )
        stream_bytes = GaugeMetricFamily(
            "medmesh_jetstream_stream_bytes",
            "Bytes stored in the stream now.",
            labels=["stream"],
        )
        published = CounterMetricFamily(
            "medmesh_jetstream_stream_published",
            "Messages ever stored in the stream (its last sequence number).",
            labels=["stream"],
        )
        streams: dict[str, StreamInfo] = {}
        for (stream, group), snapshot in sorted(snapshots.items()):
            streams[stream] = snapshot.stream
            for info in snapshot.consumers:
                key = [stream, info.name, group]
                pending.add_metric(key, info.num_pending or 0)
                ack_pending.add_metric(key, info.num_ack_pending or 0)
                redelivered.add_metric(key, info.num_redelivered or 0)
                waiting.add_metric(key, info.num_waiting or 0)
                delivered.add_metric(key, info.delivered.consumer_seq or 0 if info.delivered else 0)
                acked.add_metric(key, info.ack_floor.consumer_seq or 0 if info.ack_floor else 0)
        for stream, stream_info in streams.items():
            state = stream_info.state
            stream_messages.add_metric([stream], state.messages or 0)
            stream_bytes.add_metric([stream], state.bytes or 0)
            published.add_metric([stream], state.last_seq or 0)
        yield from (pending, ack_pending, redelivered, waiting, delivered, acked)
        yield from (stream_messages, stream_bytes, published)


_collector: JetStreamCollector | None = None
_collector_lock = threading.Lock()


def jetstream_collector() -> JetStreamCollector:
    """The process's collector, registered in the default registry on first use."""
    global _collector  # noqa: PLW0603 - one collector per registry, like the metric objects
    with _collector_lock:
        if _collector is None:
            _collector = JetStreamCollector()
            REGISTRY.register(_collector)
        return _collector


class ConsumerInfoPoller:
    """Polls one durable consumer's info, its lanes' and its stream's every `interval_s` s."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        consumer: str,
        *,
        interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self._js = js
        self.stream = stream
        self.consumer = consumer
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def poll_once(self) -> None:
        """Refresh the snapshot now; on failure drop it (raises nothing)."""
        collector = jetstream_collector()
        try:
            lane_prefix = f"{self.consumer}_lane_"
            infos = tuple(
                info
                for info in await self._js.consumers_info(self.stream)
                if info.name == self.consumer or info.name.startswith(lane_prefix)
            )
            stream = await self._js.stream_info(self.stream)
        except Exception as exc:  # noqa: BLE001 - a NATS outage must not stop the poller
            log.debug("jetstream.info_failed", consumer=self.consumer, error=str(exc))
            collector.update(self.stream, self.consumer, None)
            return
        collector.update(self.stream, self.consumer, _Snapshot(infos, stream))

    def start(self) -> None:
        """Poll in the background until `stop()`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"info-{self.consumer}")

    async def stop(self) -> None:
        """Stop polling and drop the snapshot (a stopped consumer reports nothing)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        jetstream_collector().update(self.stream, self.consumer, None)

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self._interval_s)
