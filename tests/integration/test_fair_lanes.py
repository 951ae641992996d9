"""medmesh.lanes.LanedPullConsumer against a real JetStream: one clinic's flood does not starve
another clinic's jobs, every job is handled once and settled, redeliveries and jobs of the
job subject itself (no lane) are still handled, and a new clinic's lane is found by its bell."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from support.jetstream import published

from gen.medmesh.events.v1 import DeadLetterEnvelope, ReportJob
from medmesh.consumers import BatchHandler, PullConsumer
from medmesh.jetstream import Topology, ensure_topology, publish_message
from medmesh.lanes import LanedPullConsumer
from medmesh.resources import JetStream
from medmesh.settle import Attempt, Done, Outcome
from svc_report.consumers import ConsumerLoop

WAIT_S = 30.0
FLOOD = 300
FEW = 5
BATCH = 8


@dataclass
class Jobs:
    """A connection, this test's topology (streams declared) and a publisher of text jobs."""

    nc: NatsClient
    js: JetStreamContext
    topology: Topology

    async def publish(self, clinic: str | None, count: int) -> None:
        """`count` jobs named `<clinic>-<n>` on the clinic's lane (on the job subject itself
        when `clinic` is None)."""
        base = self.topology.infer_text_subject
        subject = base if clinic is None else self.topology.lane_subject(base, clinic)
        for n in range(count):
            await self.js.publish(subject, f"{clinic or 'plain'}-{n}".encode())

    def consumer(self, handle: BatchHandler, **options: float) -> LanedPullConsumer:
        """The fair consumer of text jobs, batches of BATCH, one at a time."""
        return LanedPullConsumer(
            self.nc,
            self.js,
            self.topology,
            self.topology.infer_text_consumer,
            handle,
            batch_size=BATCH,
            **options,  # type: ignore[arg-type]
        )

    async def unsettled(self) -> dict[str, tuple[int, int]]:
        """(not delivered, not acked) of every consumer of the jobs stream."""
        infos = await self.js.consumers_info(self.topology.jobs_stream)
        return {i.name: (i.num_pending or 0, i.num_ack_pending or 0) for i in infos}

    async def assert_all_settled(self) -> None:
        """Acks are fire-and-forget: poll until no consumer has anything left (or fail)."""
        seen = await self.unsettled()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while set(seen.values()) != {(0, 0)}:
                    await asyncio.sleep(0.05)
                    seen = await self.unsettled()
        assert set(seen.values()) == {(0, 0)}, seen


@pytest.fixture
async def jobs(nats_url: str, name_prefix: str) -> AsyncIterator[Jobs]:
    """A connection and this test's own streams and consumers, deleted afterwards."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    topology = Topology(subject_root=name_prefix, stream_prefix=name_prefix.upper())
    await ensure_topology(js, topology)
    yield Jobs(nc, js, topology)
    for config in topology.stream_configs():
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(config.name)
    await nc.close()


class Recorder:
    """A batch handler that acks everything and records the order jobs were finished in."""

    def __init__(self, expected: int) -> None:
        self.done: list[str] = []
        self.batches: list[list[str]] = []
        self._expected = expected
        self._progress = asyncio.Event()

    async def __call__(self, messages: Sequence[Msg]) -> None:
        batch = [msg.data.decode() for msg in messages]
        self.batches.append(batch)
        for msg in messages:
            await msg.ack()
        self.done += batch
        self._progress.set()

    async def wait(self, count: int | None = None) -> None:
        """Until `count` (default: every expected) job was handled (fails after WAIT_S)."""
        count = self._expected if count is None else count
        try:
            async with asyncio.timeout(WAIT_S):
                while len(self.done) < count:
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            pytest.fail(f"only {len(self.done)} of {count} jobs were handled")


def flood_done_before_the_last_few(done: Sequence[str]) -> int:
    """How many of clinic-a's jobs were finished before clinic-b's last one."""
    last_b = max(i for i, name in enumerate(done) if name.startswith("clinic-b-"))
    return sum(1 for name in done[:last_b] if name.startswith("clinic-a-"))


async def test_a_clinics_few_jobs_finish_before_half_of_another_clinics_earlier_flood(
    jobs: Jobs,
) -> None:
    await jobs.publish("clinic-a", FLOOD)
    await jobs.publish("clinic-b", FEW)
    recorder = Recorder(FLOOD + FEW)
    async with AsyncExitStack() as stack:
        await jobs.consumer(recorder).start(stack)
        await recorder.wait()

    assert sorted(recorder.done) == sorted(
        [f"clinic-a-{n}" for n in range(FLOOD)] + [f"clinic-b-{n}" for n in range(FEW)]
    ), "every job handled exactly once"
    assert flood_done_before_the_last_few(recorder.done) < FLOOD // 2
    # Round-robin: both lanes share the first batch; clinic-b is through within two.
    assert flood_done_before_the_last_few(recorder.done) <= 2 * BATCH
    assert max(map(len, recorder.batches)) <= BATCH
    await jobs.assert_all_settled()


async def test_the_same_flood_starves_the_other_clinic_with_one_plain_consumer(
    jobs: Jobs,
) -> None:
    """What the lanes fix: one consumer of every lane hands jobs out in publish order."""
    await jobs.publish("clinic-a", FLOOD)
    await jobs.publish("clinic-b", FEW)
    recorder = Recorder(FLOOD + FEW)
    spec = jobs.topology.infer_text_consumer
    config = spec.config()
    config.durable_name, config.filter_subject = "plain", f"{spec.filter_subject}.*"
    async with AsyncExitStack() as stack:
        await PullConsumer(jobs.js, spec.stream, config, recorder, batch_size=BATCH).start(stack)
        await recorder.wait()

    assert flood_done_before_the_last_few(recorder.done) == FLOOD


async def test_jobs_without_a_lane_and_a_new_clinics_first_job_are_handled_without_a_refresh(
    jobs: Jobs,
) -> None:
    await jobs.publish(None, 3)
    recorder = Recorder(3 + 2)
    async with AsyncExitStack() as stack:
        # The first refresh runs at start; the next one would come only after an hour.
        consumer = jobs.consumer(recorder, refresh_s=3600.0)
        await consumer.start(stack)
        await recorder.wait(3)
        await jobs.publish("clinic-new", 2)  # its lane did not exist: the bell opens it
        await recorder.wait()
        lanes = {lane.token for lane in consumer.lanes.values()}

    assert sorted(recorder.done) == [
        "clinic-new-0",
        "clinic-new-1",
        "plain-0",
        "plain-1",
        "plain-2",
    ]
    assert lanes == {"", "clinic-new"}
    await jobs.assert_all_settled()


async def test_a_nakked_job_comes_back_on_its_lane_and_is_settled(jobs: Jobs) -> None:
    await jobs.publish("clinic-a", 4)
    seen: list[tuple[str, int]] = []
    acked = asyncio.Event()

    async def handle(messages: Sequence[Msg]) -> None:
        for msg in messages:
            seen.append((msg.data.decode(), msg.metadata.num_delivered))
            if msg.data == b"clinic-a-2" and msg.metadata.num_delivered == 1:
                await msg.nak(delay=0.3)
                continue
            await msg.ack()
            if msg.data == b"clinic-a-2":
                acked.set()

    async with AsyncExitStack() as stack:
        await jobs.consumer(handle, refresh_s=0.2).start(stack)
        async with asyncio.timeout(WAIT_S):
            await acked.wait()

    assert ("clinic-a-2", 1) in seen
    assert ("clinic-a-2", 2) in seen
    assert sorted(name for name, attempt in seen if attempt == 1) == [
        f"clinic-a-{n}" for n in range(4)
    ]
    await jobs.assert_all_settled()


async def test_svc_reports_loop_handles_a_clinics_lane_and_dead_letters_a_job_on_another_lane(
    jobs: Jobs,
) -> None:
    handled: list[str] = []

    async def handle(msg: Msg, attempt: Attempt) -> tuple[Outcome, str]:
        job = ReportJob.FromString(msg.data)
        handled.append(job.job_id)
        return Done(), job.clinic_id

    base = jobs.topology.report_subject
    for job_id, lane in (("own-lane", "clinic-a"), ("other-lane", "clinic-b")):
        job = ReportJob(job_id=job_id, clinic_id="clinic-a", study_id="s", report_id="r")
        subject = jobs.topology.lane_subject(base, lane)
        await publish_message(jobs.js, subject, job, msg_id=job_id)
    async with AsyncExitStack() as stack:
        loop = ConsumerLoop(
            jobs.topology.report_consumer,
            JetStream(jobs.nc, jobs.js, jobs.topology),
            handle,
            job_type=ReportJob,
            retry_backoff_s=(0.05,),
        )
        await loop.start(stack)
        (letter,) = await published(
            jobs.js, jobs.topology.dlq_subject(base), DeadLetterEnvelope, timeout_s=WAIT_S
        )
        await jobs.assert_all_settled()

    assert handled == ["own-lane"]
    assert ReportJob.FromString(letter.payload).job_id == "other-lane"
    assert "arrived on the lane of 'clinic-b'" in letter.error
    assert (letter.original_subject, letter.attempts) == (base, 1)
