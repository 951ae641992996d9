"""A durable JetStream pull consumer run as a background task: declare it, bind it, fetch in a
loop, hand each batch to the service, and stop cleanly.

Why one place: every service that consumes JetStream needs the same lifecycle, and each copy
of it had to get the same details right:

- the consumer is declared at start-up (`add_consumer` creates it, accepts an identical config
  and applies allowed changes), so a fresh deployment needs no separate migration step;
- the loop outlives NATS outages: a failed fetch is logged and retried after a short pause,
  and an empty fetch (the timeout) is simply the idle case;
- a failing handler is logged and the loop goes on; the messages it did not settle are
  redelivered by the server after the consumer's `ack_wait` (or its `backoff`), so one poison
  message cannot stop the consumer, nor spin it in a hot loop of immediate redeliveries;
- long work keeps its messages: while a batch is in the handler, every message of it that is
  not settled yet gets an `in_progress` heartbeat every third of the ack wait, so a batch
  that takes longer than the ack wait (a slow model call, MIS retries) is not handed to
  another worker meanwhile; only a dead or stalled worker lets its messages time out. The
  heartbeats stop after `heartbeat_limit_s`: a handler stuck that long lets its messages go;
- `stop()` cancels the loop and unsubscribes: a pull subscription left open makes
  `nc.drain()` wait its whole drain timeout at shutdown.

What to do with a message (ack, nak with a delay, term, dead-letter) stays with the service: the
handler receives the fetched messages and settles them itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig

from medmesh.jetstream_metrics import ConsumerInfoPoller

log = structlog.get_logger(__name__)

BatchHandler = Callable[[Sequence[Msg]], Awaitable[None]]
"""Processes one fetched batch and settles (acks, naks, terms) its messages."""

FETCH_RETRY_S = 1.0
"""Pause after a failed fetch (connection lost, JetStream unavailable) before the next one."""
_MIN_FETCH_S = 0.002
_CANCELLED_WAIT_S = 10.0
HEARTBEAT_LIMIT_S = 600.0
"""How long a batch may keep its messages with `in_progress` heartbeats."""


class PullConsumer:
    """One durable pull consumer and the task that feeds its batches to `handle_batch`.

    `declare=False` only binds to a consumer that something else declared (`config` then
    only names it). `batch_size` bounds how many messages one handler call gets;
    `fetch_timeout_s` is how long an idle fetch waits, which is also how often the loop
    looks up when nothing arrives.
    `fill_wait_s`: once a batch has its first messages, how long to wait for more, up to
    `batch_size` (micro-batching; 0 takes what the first fetch returned). `concurrency`: how
    many batches may be in the handler at once (the next batch is fetched while earlier ones
    are handled). `stop_grace_s` is how long `stop()` lets the batches in hand finish (and
    settle) before they are cancelled; with 0 they are cancelled at once and their unsettled
    messages are redelivered after `ack_wait`. `heartbeat_limit_s` bounds how long one batch
    keeps its messages with `in_progress` heartbeats (sent every third of the ack wait).
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        config: ConsumerConfig,
        handle_batch: BatchHandler,
        *,
        name: str | None = None,
        declare: bool = True,
        batch_size: int = 32,
        fetch_timeout_s: float = 1.0,
        fill_wait_s: float = 0.0,
        concurrency: int = 1,
        stop_grace_s: float = 0.0,
        fetch_retry_s: float = FETCH_RETRY_S,
        heartbeat_limit_s: float = HEARTBEAT_LIMIT_S,
    ) -> None:
        if not config.durable_name:
            raise ValueError("a PullConsumer needs a durable consumer: set durable_name")
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
        self.durable: str = config.durable_name
        self.stream = stream
        self.name = name or self.durable
        self._declare = declare
        self._js = js
        self._config = config
        self._handle_batch = handle_batch
        self._batch_size = batch_size
        self._fetch_timeout_s = fetch_timeout_s
        self._fill_wait_s = fill_wait_s
        self._slots = asyncio.Semaphore(concurrency)
        self._in_hand: set[asyncio.Future[None]] = set()
        self._stop_grace_s = stop_grace_s
        self._fetch_retry_s = fetch_retry_s
        self._heartbeat_limit_s = heartbeat_limit_s
        # JetStream uses backoff[n] as the ack wait of delivery n when a BackOff list is set.
        waits = [float(w) for w in (config.backoff or []) + [config.ack_wait] if w]
        self._heartbeat_s = min(waits) / 3 if waits else 0.0
        self._sub: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        # Queue depth and rates on /metrics (medmesh.jetstream_metrics).
        self._info = ConsumerInfoPoller(js, stream, self.durable)

    @property
    def running(self) -> bool:
        """Whether the fetch loop is alive (started, not stopped, not crashed)."""
        return self._task is not None and not self._task.done()

    async def start(self, stack: AsyncExitStack) -> None:
        """Declare the consumer (idempotent), bind to it and start the loop; `stack` stops it.

        Registering on the stack here (not in every caller) is what guarantees the
        unsubscribe before the connection's drain, which closes later on the same stack.
        """
        if self._task is not None:
            raise RuntimeError(f"consumer {self.name} is already started")
        if self._declare:
            await self._js.add_consumer(self.stream, self._config)
        self._sub = await self._js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        self._task = asyncio.create_task(self._run(self._sub), name=f"consumer-{self.name}")
        self._info.start()
        stack.push_async_callback(self.stop)

    async def stop(self) -> None:
        """Stop fetching and unsubscribe; safe to call twice. Unacked messages are
        redelivered to the next start (of this process or another).

        If the caller is cancelled while the batch in hand is finishing, the unsubscribe still
        happens and the cancellation propagates.
        """
        task, sub = self._task, self._sub
        self._task = self._sub = None
        try:
            if task is not None:
                task.cancel()
                await _wait_cancelled(task)
        finally:
            if sub is not None:
                # Raises when the connection is already closed or draining: nothing to undo.
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            await self._info.stop()

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        try:
            while True:
                await self._slots.acquire()
                messages = await self._fetch(sub)
                if not messages:
                    self._slots.release()
                    continue
                batch = asyncio.ensure_future(self._handle(messages))
                self._in_hand.add(batch)
                batch.add_done_callback(self._batch_done)
        except asyncio.CancelledError:
            # stop(): the batches in hand get the grace period to settle, then are cancelled
            # (their unsettled messages come back after ack_wait).
            if self._in_hand:
                _, late = await asyncio.wait(set(self._in_hand), timeout=self._stop_grace_s)
                for late_batch in late:
                    late_batch.cancel()
                if late:  # bounded: a handler that swallows its cancellation cannot hang stop
                    await asyncio.wait(late, timeout=_CANCELLED_WAIT_S)
            raise

    def _batch_done(self, batch: asyncio.Future[None]) -> None:
        self._in_hand.discard(batch)
        self._slots.release()

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        """Up to batch_size messages: whatever arrives within fetch_timeout_s, then more for
        up to fill_wait_s while the batch is not full."""
        messages = await self._fetch_some(sub, self._batch_size, self._fetch_timeout_s)
        if not messages or self._fill_wait_s <= 0:
            return messages
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._fill_wait_s
        while len(messages) < self._batch_size:
            left = deadline - loop.time()
            if left < _MIN_FETCH_S:
                break
            more = await self._fetch_some(sub, self._batch_size - len(messages), left)
            if not more:
                break
            messages += more
        return messages

    async def _fetch_some(
        self, sub: JetStreamContext.PullSubscription, count: int, timeout_s: float
    ) -> list[Msg]:
        try:
            return await sub.fetch(count, timeout=timeout_s)
        except TimeoutError:  # nats.errors.TimeoutError is one too: nothing arrived
            return []
        except Exception as exc:  # noqa: BLE001 - keep consuming through NATS outages
            log.warning(
                "consumer.fetch_failed", consumer=self.name, error=str(exc) or type(exc).__name__
            )
            await asyncio.sleep(self._fetch_retry_s)
            return []

    async def _handle(self, messages: list[Msg]) -> None:
        heartbeat = (
            asyncio.create_task(self._heartbeat(messages), name=f"heartbeat-{self.name}")
            if self._heartbeat_s > 0
            else None
        )
        try:
            await self._handle_batch(messages)
        except Exception:  # unsettled messages come back after ack_wait (or backoff)
            log.exception("consumer.batch_failed", consumer=self.name, messages=len(messages))
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                await _wait_cancelled(heartbeat)

    async def _heartbeat(self, messages: list[Msg]) -> None:
        """`in_progress` for every unsettled message of the batch, every third of the ack
        wait, until the handler returns or `heartbeat_limit_s` has passed."""
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + self._heartbeat_limit_s
        while True:
            await asyncio.sleep(self._heartbeat_s)
            if loop.time() >= stop_at:
                log.warning("consumer.batch_stalled", consumer=self.name, messages=len(messages))
                return
            for msg in messages:
                if not msg.is_acked:
                    try:
                        await msg.in_progress()
                    except Exception as exc:  # noqa: BLE001 - a lost heartbeat costs a redelivery
                        log.warning("consumer.heartbeat_failed", consumer=self.name, error=str(exc))
                        break


async def _wait_cancelled(task: asyncio.Task[None]) -> None:
    """Wait for a cancelled task to end; re-raise only if *our* caller was cancelled too
    (a bare `suppress(CancelledError)` would swallow that and leave the caller running)."""
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
