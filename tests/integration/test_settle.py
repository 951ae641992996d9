"""The one settle policy (medmesh.settle) through the consumer loop svc_report runs, against a
real JetStream: a failing job is attempted exactly MEDMESH_JOB_MAX_ATTEMPTS times, a job whose
attempts run out through ack timeouts is dead-lettered rather than dropped, and a dead-letter
publish that fails on the last attempt is retried."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from support.jetstream import published

from gen.medmesh.events.v1 import DeadLetterEnvelope, ReportJob
from medmesh.jetstream import Topology, ensure_topology, publish_message
from medmesh.resources import JetStream
from medmesh.settings import Settings
from medmesh.settle import Attempt, Done, GiveUp, Outcome, Retry, Settler
from svc_report.consumers import ConsumerLoop

WAIT_S = 20.0
CLINIC = "clinic-a"


@dataclass
class Bus:
    """This test's JetStream with its own topology (attempt limit, ack wait)."""

    jetstream: JetStream
    topology: Topology

    async def publish_job(self, job_id: str = "job-1") -> ReportJob:
        """A ReportJob on the report subject."""
        job = ReportJob(job_id=job_id, clinic_id=CLINIC, study_id="s-1", report_id="r-1")
        await publish_message(self.jetstream.js, self.topology.report_subject, job, msg_id=job_id)
        return job

    async def letters(self, *, count: int = 1, timeout_s: float = WAIT_S) -> list[Any]:
        """Dead letters of report jobs so far."""
        subject = self.topology.dlq_subject(self.topology.report_subject)
        return await published(
            self.jetstream.js, subject, DeadLetterEnvelope, count=count, timeout_s=timeout_s
        )


BusFactory = Callable[..., Awaitable[Bus]]


@pytest.fixture
async def make_bus(nats_url: str, name_prefix: str) -> AsyncIterator[BusFactory]:
    """Builds the test's topology (fresh streams) with the given attempt limit and ack wait."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    made: list[Topology] = []

    async def make(*, max_attempts: int, ack_wait_s: float = 30.0) -> Bus:
        topology = Topology(
            subject_root=name_prefix,
            stream_prefix=name_prefix.upper(),
            max_attempts=max_attempts,
            ack_wait_s=ack_wait_s,
        )
        await ensure_topology(js, topology)
        made.append(topology)
        return Bus(JetStream(nc, js, topology), topology)

    yield make
    for topology in made:
        for config in topology.stream_configs():
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(config.name)
    await nc.close()


class CountingHandler:
    """Returns `outcome` for every message and counts the calls."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.attempts: list[int] = []

    async def __call__(self, msg: Msg, attempt: Attempt) -> tuple[Outcome, str]:
        self.attempts.append(attempt.number)
        return self.outcome, ReportJob.FromString(msg.data).clinic_id


async def run_loop(bus: Bus, handler: CountingHandler, settler: Settler | None = None) -> Any:
    """A started ConsumerLoop on the report consumer; use as `async with`."""
    stack = AsyncExitStack()
    loop = ConsumerLoop(
        bus.topology.report_consumer,
        bus.jetstream,
        handler,
        job_type=ReportJob,
        retry_backoff_s=(0.05,),
        settler=settler,
    )
    await loop.start(stack)
    return stack


def test_the_default_attempt_count_is_one_try_and_three_retries_for_every_consumer() -> None:
    settings = Settings.from_env({}, service="report")
    topology = Topology(
        max_attempts=settings.job_max_attempts, ack_wait_s=settings.job_ack_wait_s
    )
    assert {spec.max_attempts for spec in topology.consumer_specs()} == {4}
    assert {spec.ack_wait_s for spec in topology.consumer_specs()} == {30.0}
    env = {"MEDMESH_JOB_MAX_ATTEMPTS": "2", "MEDMESH_JOB_ACK_WAIT_S": "5"}
    configured = Settings.from_env(env, service="infer")
    assert (configured.job_max_attempts, configured.job_ack_wait_s) == (2, 5.0)


@pytest.mark.parametrize("max_attempts", [1, 2, 4])
async def test_an_always_failing_job_is_attempted_exactly_n_times_then_dead_lettered(
    make_bus: BusFactory, max_attempts: int
) -> None:
    bus = await make_bus(max_attempts=max_attempts)
    handler = CountingHandler(Retry("the archive is unreachable"))
    job = await bus.publish_job()

    async with await run_loop(bus, handler):
        letters = await bus.letters()
        await asyncio.sleep(0.5)  # ten retry delays: another attempt would show by now

    assert handler.attempts == list(range(1, max_attempts + 1))
    assert [(e.attempts, e.error, e.clinic_id) for e in letters] == [
        (max_attempts, "the archive is unreachable", CLINIC)
    ]
    assert ReportJob.FromString(letters[0].payload) == job


async def test_a_job_whose_attempts_run_out_through_ack_timeouts_is_dead_lettered_not_dropped(
    make_bus: BusFactory,
) -> None:
    """Two workers take the job and die without settling it (no ack, no heartbeat); the
    worker that gets it next dead-letters it without working on it."""
    bus = await make_bus(max_attempts=2, ack_wait_s=1.0)
    job = await bus.publish_job()
    spec = bus.topology.report_consumer
    await bus.jetstream.js.add_consumer(spec.stream, spec.config())
    dying = await bus.jetstream.js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
    for delivery in (1, 2):
        [msg] = await dying.fetch(1, timeout=5)  # waits out the previous ack_wait
        assert msg.metadata.num_delivered == delivery
    await dying.unsubscribe()

    handler = CountingHandler(Done())
    async with await run_loop(bus, handler):
        letters = await bus.letters()

    assert handler.attempts == []  # no third attempt of a job allowed two
    assert [(e.attempts, e.clinic_id) for e in letters] == [(2, CLINIC)]
    assert "attempts ran out" in letters[0].error
    assert "ack wait of 1 s" in letters[0].error
    assert ReportJob.FromString(letters[0].payload) == job
    info = await bus.jetstream.js.consumer_info(spec.stream, spec.durable)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


@pytest.mark.parametrize("outcome", [Retry("still failing"), GiveUp("refused for good")])
async def test_a_dead_letter_publish_that_fails_on_the_last_attempt_is_retried(
    make_bus: BusFactory, outcome: Outcome
) -> None:
    """The DLQ stream is gone for about a second (NATS restarting, a stream being moved)
    exactly when the job's last attempt fails; the letter is still published, within the
    same delivery (the ack wait is far longer than the test)."""
    bus = await make_bus(max_attempts=1)
    dlq = next(c for c in bus.topology.stream_configs() if c.name == bus.topology.dlq_stream)
    await bus.jetstream.js.delete_stream(dlq.name)
    handler = CountingHandler(outcome)
    settler = Settler(
        bus.jetstream,
        bus.topology.report_consumer,
        (0.05,),
        dlq_publish_tries=6,
        dlq_retry_initial_s=0.2,
    )
    await bus.publish_job()

    async with await run_loop(bus, handler, settler):
        await asyncio.sleep(1.0)
        await bus.jetstream.js.add_stream(dlq)
        letters = await bus.letters(timeout_s=10)

    assert handler.attempts == [1]
    assert [(e.attempts, e.error) for e in letters] == [(1, outcome.error)]
