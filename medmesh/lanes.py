"""Fair scheduling of a job consumer: one lane per clinic, fetched round-robin.

Why: a single durable consumer hands out jobs in stream order, so a clinic that enqueues a
thousand jobs makes every other clinic wait behind all of them. Producers therefore publish
laned jobs on `<job subject>.<clinic>` (medmesh.jetstream.Topology.publish_subject), each
lane has its own durable consumer (`<durable>_lane_<clinic>`, created here when the lane is
first seen), and `LanedPullConsumer` builds every batch from the lanes that have work, in
turn: with `n` lanes waiting, each gets about `batch_size / n` places of a batch, and the
places a lane cannot fill go to the others (no capacity is left idle). A clinic's jobs
therefore wait behind at most a few batches of other clinics, not behind their backlog.

What stays as it was: every message is a JetStream message of a durable consumer with
explicit ack, so at-least-once delivery, the settle policy (medmesh.settle: attempts,
nak delays, dead letters), the `in_progress` heartbeats and the graceful stop are those of
medmesh.consumers.PullConsumer, which this class extends (only fetching differs). A lane's
`max_ack_pending` bounds how many of one clinic's jobs are in flight across all replicas.
Jobs published on the job subject itself (before lanes existed, by an old producer) form
one more lane, the job subject's own durable consumer.

How lanes with work are found without polling every lane for every batch:
- a lane's *hint* is how many messages it holds that were never delivered: set from the
  consumer list (`num_pending`) at every refresh, from the last fetched message's metadata
  (`num_pending`) after each fetch, and raised by one for each "bell": a core NATS
  subscription on the lane subjects receives a copy of every job as it is published, which
  also wakes an idle worker at once and reveals a new clinic's lane;
- a refresh (every `refresh_s`, and whenever a bell names an unknown lane) lists the
  stream's lane subjects (new lanes, even ones whose bell was missed while the worker was
  down) and every consumer's counts; a lane with more unacknowledged messages than this
  worker holds may have a redelivery due (a nak delay ran out, another worker died), so it
  gets one probing fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from medmesh.consumers import FETCH_RETRY_S, HEARTBEAT_LIMIT_S, BatchHandler, PullConsumer
from medmesh.jetstream import ConsumerSpec, Topology

log = structlog.get_logger(__name__)

REFRESH_S = 2.0
"""How often the lane list and every lane's counts are read again."""
LANE_FETCH_TIMEOUT_S = 0.05
"""How long one lane's fetch waits when the lane turns out to be empty (its hint was stale)."""
_CONSUMER_LIST_PAGE = 256  # JetStream's page size for CONSUMER.LIST


@dataclass
class Lane:
    """One clinic's lane (or the job subject's own, `token` "") and what is known of it."""

    token: str
    subject: str
    durable: str
    sub: JetStreamContext.PullSubscription
    hint: int = 0
    """Messages believed to wait in the lane, never delivered yet."""
    probe: bool = False
    """Worth one fetch though `hint` is 0: a redelivery may be due."""
    held: list[Msg] = field(default_factory=list)
    """This worker's messages of the lane not settled yet (pruned at each refresh)."""

    @property
    def ready(self) -> bool:
        """Whether a fetch from the lane is expected to return something."""
        return self.hint > 0 or self.probe or self.sub.pending_msgs > 0

    def unsettled(self) -> int:
        """How many of the held messages are still unsettled (prunes the settled ones)."""
        self.held = [m for m in self.held if not m.is_acked]
        return len(self.held)


class LanedPullConsumer(PullConsumer):
    """A PullConsumer of a laned job subject (`spec.filter_subject`) that fetches from every
    clinic lane in turn; see the module doc. `refresh_s` is how often lanes and their counts
    are re-read; `lane_fetch_timeout_s` how long a fetch from a lane that proves empty waits.
    The other arguments are PullConsumer's."""

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        topology: Topology,
        spec: ConsumerSpec,
        handle_batch: BatchHandler,
        *,
        name: str | None = None,
        batch_size: int = 32,
        fetch_timeout_s: float = 1.0,
        fill_wait_s: float = 0.0,
        concurrency: int = 1,
        stop_grace_s: float = 0.0,
        fetch_retry_s: float = FETCH_RETRY_S,
        heartbeat_limit_s: float = HEARTBEAT_LIMIT_S,
        refresh_s: float = REFRESH_S,
        lane_fetch_timeout_s: float = LANE_FETCH_TIMEOUT_S,
    ) -> None:
        if spec.filter_subject not in topology.laned_subjects:
            raise ValueError(f"{spec.filter_subject!r} has no clinic lanes")
        super().__init__(
            js,
            spec.stream,
            spec.config(),
            handle_batch,
            name=name,
            declare=False,
            batch_size=batch_size,
            fetch_timeout_s=fetch_timeout_s,
            fill_wait_s=fill_wait_s,
            concurrency=concurrency,
            stop_grace_s=stop_grace_s,
            fetch_retry_s=fetch_retry_s,
            heartbeat_limit_s=heartbeat_limit_s,
        )
        self._nc = nc
        self._topology = topology
        self._spec = spec
        self._refresh_s = refresh_s
        self._lane_fetch_timeout_s = lane_fetch_timeout_s
        self._lanes: dict[str, Lane] = {}
        self._rotation: list[str] = []
        self._cursor = 0
        self._unknown: set[str] = set()
        self._bell = asyncio.Event()
        self._bells: list[Subscription] = []
        self._next_refresh = 0.0

    @property
    def lanes(self) -> dict[str, Lane]:
        """The lanes seen so far, by subject (tests and metrics read them)."""
        return self._lanes

    @property
    def waiting(self) -> int:
        """Jobs believed to wait in all lanes, never delivered yet (for the queue gauge)."""
        return sum(lane.hint for lane in self._lanes.values())

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        """Listen for bells, then bind the job subject's consumer and start fetching; lanes
        are opened by the first refresh."""
        base = self._spec.filter_subject
        for subject in (base, f"{base}.*"):
            self._bells.append(await self._nc.subscribe(subject, cb=self._ring))
        await super().start(stack)

    async def stop(self) -> None:
        """PullConsumer.stop, then unsubscribe every lane and the bells."""
        await super().stop()
        subs: list[Subscription | JetStreamContext.PullSubscription] = [
            lane.sub for lane in self._lanes.values()
        ]
        subs += self._bells
        self._bells = []
        for sub in subs:
            with contextlib.suppress(Exception):  # closed connection: nothing to undo
                await sub.unsubscribe()

    async def _ring(self, msg: Msg) -> None:
        lane = self._lanes.get(msg.subject)
        if lane is not None:
            lane.hint += 1
        elif self._topology.lane_of(msg.subject) or msg.subject == self._spec.filter_subject:
            self._unknown.add(msg.subject)
        self._bell.set()

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        try:
            return await self._fetch_fairly(sub)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep consuming through NATS outages
            log.warning(
                "consumer.fetch_failed", consumer=self.name, error=str(exc) or type(exc).__name__
            )
            self._next_refresh = 0.0
            await asyncio.sleep(self._fetch_retry_s)
            return []

    async def _fetch_fairly(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        loop = asyncio.get_running_loop()
        base = self._spec.filter_subject
        if base not in self._lanes:
            self._add_lane(Lane("", base, self._spec.durable, sub))
        if self._unknown or loop.time() >= self._next_refresh:
            await self._refresh()
        if not any(lane.ready for lane in self._lanes.values()):
            self._bell.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._fetch_timeout_s):
                    await self._bell.wait()
            return []  # the next call refreshes if a bell named a new lane
        messages = await self._fill(self._batch_size)
        if not messages or self._fill_wait_s <= 0:
            return messages
        deadline = loop.time() + self._fill_wait_s
        while len(messages) < self._batch_size and loop.time() < deadline:
            if not any(lane.ready for lane in self._lanes.values()):
                self._bell.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(deadline - loop.time()):
                        await self._bell.wait()
                continue
            more = await self._fill(self._batch_size - len(messages))
            if not more:
                break
            messages += more
        return messages

    async def _fill(self, capacity: int) -> list[Msg]:
        """Up to `capacity` messages: each ready lane in turn (from the cursor) gets an equal
        share; what a lane cannot fill goes to the lanes that still have work. The cursor
        moves past the last lane served, so with more lanes than places every lane gets its
        turn in the next batches."""
        count = len(self._rotation)
        order = [self._rotation[(self._cursor + i) % count] for i in range(count)]
        ready = [self._lanes[s] for s in order if self._lanes[s].ready]
        if not ready:
            return []
        share = max(1, math.ceil(capacity / len(ready)))
        got: list[Msg] = []
        last_served = ""
        for lane in ready:
            if len(got) >= capacity:
                break
            got += await self._fetch_lane(lane, min(share, capacity - len(got)))
            last_served = lane.subject
        for lane in ready:  # leftover places: work-conserving
            if len(got) >= capacity:
                break
            if lane.ready:
                got += await self._fetch_lane(lane, capacity - len(got))
        if last_served:
            self._cursor = (self._rotation.index(last_served) + 1) % count
        return got

    async def _fetch_lane(self, lane: Lane, want: int) -> list[Msg]:
        # Ask for no more than the lane is known to hold: a fetch for more waits its timeout.
        # A probe asks for its whole share: redeliveries due are not in any count.
        if not lane.probe:
            want = max(1, min(want, lane.hint + lane.sub.pending_msgs))
        lane.probe = False
        try:
            messages = await lane.sub.fetch(want, timeout=self._lane_fetch_timeout_s)
        except TimeoutError:  # nats.errors.TimeoutError is one too: the lane is empty
            messages = []
        except Exception as exc:  # noqa: BLE001 - e.g. the lane's consumer was removed
            log.warning("consumer.lane_fetch_failed", consumer=lane.durable, error=str(exc))
            lane.hint = 0
            self._next_refresh = 0.0
            return []
        lane.hint = 0
        if messages:
            with contextlib.suppress(Exception):
                lane.hint = int(messages[-1].metadata.num_pending)
                # Redeliveries came back (after an outage, nak'ed jobs come back in waves):
                # keep probing until a probe finds none, not one job per refresh.
                lane.probe = any(m.metadata.num_delivered > 1 for m in messages)
            lane.held += messages
        return messages

    def _add_lane(self, lane: Lane) -> None:
        self._lanes[lane.subject] = lane
        self._rotation.append(lane.subject)

    async def _open_lane(self, subject: str) -> None:
        """Declare the lane's durable consumer (idempotent) and bind to it."""
        token = self._topology.lane_of(subject)
        if not token:
            return
        spec = self._topology.lane_consumer(self._spec, token)
        await self._js.add_consumer(spec.stream, spec.config())
        sub = await self._js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
        old = self._lanes.get(subject)
        if old is None:
            self._add_lane(Lane(token, subject, spec.durable, sub))
        else:  # the server removed an idle lane's consumer: the same lane, bound again
            with contextlib.suppress(Exception):
                await old.sub.unsubscribe()
            old.sub = sub

    async def _refresh(self) -> None:
        """Open lanes not seen yet, then set every lane's hint from the consumers' counts."""
        loop = asyncio.get_running_loop()
        self._next_refresh = loop.time() + self._refresh_s
        base = self._spec.filter_subject
        self._unknown.discard(base)
        info = await self._js.stream_info(self.stream, subjects_filter=f"{base}.*")
        subjects = set(info.state.subjects or {}) | self._unknown
        self._unknown.clear()
        for subject in sorted(subjects - self._lanes.keys()):
            await self._open_lane(subject)
        counts = await self._consumer_counts()
        for lane in list(self._lanes.values()):
            if lane.durable not in counts:
                if lane.token:  # removed while idle: open it again (it delivers what is new)
                    await self._open_lane(lane.subject)
                continue
            pending, unacked = counts[lane.durable]
            lane.hint = pending
            lane.probe = unacked > lane.unsettled()

    async def _consumer_counts(self) -> dict[str, tuple[int, int]]:
        """(num_pending, num_ack_pending) of every consumer of the stream, by name."""
        counts: dict[str, tuple[int, int]] = {}
        offset = 0
        while True:
            page = await self._js.consumers_info(self.stream, offset=offset or None)
            for info in page:
                counts[info.name] = (info.num_pending or 0, info.num_ack_pending or 0)
            if len(page) < _CONSUMER_LIST_PAGE:
                return counts
            offset += len(page)
