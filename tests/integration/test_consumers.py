"""medmesh.consumers.PullConsumer against a real JetStream: messages reach the handler, a failing
handler neither kills the loop nor loses the message, and stop() leaves nothing for the
connection's drain to wait on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from medmesh.consumers import PullConsumer

DRAIN_TIMEOUT_S = 10
WAIT_S = 10.0


@dataclass
class Nats:
    """A connection of this test, its JetStream context, its stream and subject root."""

    nc: NatsClient
    js: JetStreamContext
    stream: str
    root: str
    errors: list[Exception] = field(default_factory=list)

    async def publish(self, *payloads: bytes) -> None:
        """Publish each payload on `<root>.work` and wait for JetStream's ack."""
        for payload in payloads:
            await self.js.publish(f"{self.root}.work", payload)

    def config(self, *, ack_wait_s: float = 30.0) -> ConsumerConfig:
        """A durable, explicit-ack consumer of `<root>.work`."""
        return ConsumerConfig(
            durable_name="work",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            filter_subject=f"{self.root}.work",
        )

    async def unsettled(self) -> tuple[int, int]:
        """(messages not yet delivered, messages delivered but not acked) of the consumer."""
        info = await self.js.consumer_info(self.stream, "work")
        return info.num_pending or 0, info.num_ack_pending or 0

    async def assert_unsettled(self, expected: tuple[int, int]) -> None:
        """Acks are fire-and-forget: poll the consumer's counts until they are `expected`."""
        seen = await self.unsettled()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT_S):
                while seen != expected:
                    await asyncio.sleep(0.05)
                    seen = await self.unsettled()
        assert seen == expected, "(not delivered, not acked)"


@pytest.fixture
async def bus(nats_url: str, name_prefix: str) -> AsyncIterator[Nats]:
    """A connection that records its async errors (a drain timeout is one) and a fresh stream."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(nats_url, drain_timeout=DRAIN_TIMEOUT_S, error_cb=on_error)
    js = nc.jetstream()
    stream = f"{name_prefix.upper()}_WORK"
    await js.add_stream(name=stream, subjects=[f"{name_prefix}.>"])
    yield Nats(nc, js, stream, name_prefix, errors)
    if nc.is_closed:
        nc = await nats.connect(nats_url)
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await nc.jetstream().delete_stream(stream)
    await nc.close()


async def wait_for(event: asyncio.Event, what: str) -> None:
    """Wait for `event`; fail after WAIT_S naming `what`."""
    try:
        async with asyncio.timeout(WAIT_S):
            await event.wait()
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def test_published_messages_reach_the_handler_in_bounded_batches_and_are_acked(
    bus: Nats,
) -> None:
    payloads = [f"job-{n}".encode() for n in range(7)]
    batches: list[list[bytes]] = []
    all_handled = asyncio.Event()

    async def handle(messages: Sequence[Msg]) -> None:
        batches.append([msg.data for msg in messages])
        for msg in messages:
            await msg.ack()
        if sum(map(len, batches)) >= len(payloads):
            all_handled.set()

    await bus.publish(*payloads)
    async with AsyncExitStack() as stack:
        consumer = PullConsumer(bus.js, bus.stream, bus.config(), handle, batch_size=3)
        await consumer.start(stack)
        await wait_for(all_handled, "all seven messages")
        assert consumer.running

    assert sorted(data for batch in batches for data in batch) == sorted(payloads)
    assert max(map(len, batches)) <= 3
    await bus.assert_unsettled((0, 0))


async def test_a_failing_handler_does_not_stop_the_loop_and_its_message_is_redelivered(
    bus: Nats,
) -> None:
    deliveries: list[tuple[bytes, int]] = []
    acked: dict[bytes, asyncio.Event] = {b"poison": asyncio.Event(), b"after": asyncio.Event()}

    async def handle(messages: Sequence[Msg]) -> None:
        for msg in messages:
            deliveries.append((msg.data, msg.metadata.num_delivered))
            if msg.data == b"poison" and msg.metadata.num_delivered == 1:
                raise RuntimeError("the database went away")
            await msg.ack()
            acked[msg.data].set()

    async with AsyncExitStack() as stack:
        # ack_wait is the redelivery delay of a message the handler left unsettled.
        consumer = PullConsumer(
            bus.js, bus.stream, bus.config(ack_wait_s=1.0), handle, batch_size=1
        )
        await consumer.start(stack)
        await bus.publish(b"poison")
        await wait_for(acked[b"poison"], "the redelivered message to be acked")
        assert consumer.running
        await bus.publish(b"after")
        await wait_for(acked[b"after"], "the next message")

    assert [n for data, n in deliveries if data == b"poison"] == [1, 2]
    await bus.assert_unsettled((0, 0))


async def test_stop_returns_promptly_and_a_drain_after_it_does_not_wait_its_timeout(
    bus: Nats,
) -> None:
    handled = asyncio.Event()

    async def handle(messages: Sequence[Msg]) -> None:
        for msg in messages:
            await msg.ack()
        handled.set()

    stack = AsyncExitStack()
    consumer = PullConsumer(bus.js, bus.stream, bus.config(), handle, fetch_timeout_s=5.0)
    await consumer.start(stack)
    await bus.publish(b"one")
    await wait_for(handled, "the first message")

    # The loop is now inside a 5 s idle fetch: stop must not wait for it to end.
    async with asyncio.timeout(1.0):
        await stack.aclose()
    assert not consumer.running
    await consumer.stop()  # a second stop is a no-op

    async with asyncio.timeout(DRAIN_TIMEOUT_S / 2):
        await bus.nc.drain()
    assert bus.nc.is_closed
    assert not [e for e in bus.errors if isinstance(e, nats.errors.DrainTimeoutError)]


@pytest.mark.parametrize(
    ("stop_grace_s", "settled_by_handler"),
    [
        pytest.param(5.0, True, id="grace-lets-the-batch-in-hand-finish-and-ack"),
        pytest.param(0.0, False, id="no-grace-cancels-it-and-the-message-stays-unacked"),
    ],
)
async def test_stop_while_a_batch_is_in_hand_honours_the_grace_period(
    bus: Nats, stop_grace_s: float, settled_by_handler: bool
) -> None:
    started = asyncio.Event()

    async def handle(messages: Sequence[Msg]) -> None:
        started.set()
        await asyncio.sleep(0.5)
        for msg in messages:
            await msg.ack()

    async with AsyncExitStack() as stack:
        consumer = PullConsumer(bus.js, bus.stream, bus.config(), handle, stop_grace_s=stop_grace_s)
        await consumer.start(stack)
        await bus.publish(b"slow")
        await wait_for(started, "the handler to start")

    assert not consumer.running
    await bus.assert_unsettled((0, 0 if settled_by_handler else 1))


async def test_a_batch_waits_up_to_its_fill_time_for_messages_that_trickle_in(bus: Nats) -> None:
    batches: list[int] = []
    five = asyncio.Event()

    async def handle(messages: Sequence[Msg]) -> None:
        batches.append(len(messages))
        for msg in messages:
            await msg.ack()
        if sum(batches) >= 5:
            five.set()

    async with AsyncExitStack() as stack:
        consumer = PullConsumer(
            bus.js, bus.stream, bus.config(), handle, batch_size=5, fill_wait_s=2.0
        )
        await consumer.start(stack)
        for n in range(5):  # one at a time, well within the fill time
            await bus.publish(f"job-{n}".encode())
            await asyncio.sleep(0.05)
        await wait_for(five, "five messages")
    assert batches == [5]
    await bus.assert_unsettled((0, 0))


async def test_up_to_concurrency_batches_are_handled_at_once(bus: Nats) -> None:
    running, most = 0, 0
    release = asyncio.Event()
    two_running = asyncio.Event()

    async def handle(messages: Sequence[Msg]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if running == 2:
            two_running.set()
        await release.wait()
        for msg in messages:
            await msg.ack()
        running -= 1

    await bus.publish(b"a", b"b", b"c")
    async with AsyncExitStack() as stack:
        consumer = PullConsumer(
            bus.js, bus.stream, bus.config(), handle, batch_size=1, concurrency=2
        )
        await consumer.start(stack)
        await wait_for(two_running, "two batches in the handler")
        await asyncio.sleep(0.3)  # the third batch must not start while two are in hand
        assert most == 2
        release.set()
        await bus.assert_unsettled((0, 0))
    assert most == 2


@pytest.mark.parametrize(
    ("heartbeat_limit_s", "deliveries"),
    [
        pytest.param(600.0, [1], id="heartbeats-keep-a-long-batch-from-being-redelivered"),
        pytest.param(0.5, [1, 2], id="a-batch-stuck-past-the-heartbeat-limit-lets-it-go"),
    ],
)
async def test_a_batch_that_outlasts_the_ack_wait_keeps_its_messages_with_heartbeats(
    bus: Nats, heartbeat_limit_s: float, deliveries: list[int]
) -> None:
    """The handler works 3.5 s on a consumer whose ack wait is 1 s; a second slot is free to
    fetch a redelivery meanwhile. In-progress heartbeats keep the message with its worker."""
    seen: list[int] = []
    first_done = asyncio.Event()

    async def handle(messages: Sequence[Msg]) -> None:
        for msg in messages:
            seen.append(msg.metadata.num_delivered)
        if len(seen) == 1:
            await asyncio.sleep(3.5)
        for msg in messages:
            await msg.ack()
        first_done.set()

    await bus.publish(b"long")
    async with AsyncExitStack() as stack:
        consumer = PullConsumer(
            bus.js,
            bus.stream,
            bus.config(ack_wait_s=1.0),
            handle,
            batch_size=1,
            concurrency=2,
            heartbeat_limit_s=heartbeat_limit_s,
        )
        await consumer.start(stack)
        await wait_for(first_done, "the long batch")
        await asyncio.sleep(1.5)  # more than the ack wait: a redelivery would show by now
    assert seen == deliveries
    await bus.assert_unsettled((0, 0))
