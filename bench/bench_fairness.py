"""Fair scheduling (issue 11, item 15): how long clinic B's few jobs take while clinic A's
flood is queued, against the same jobs on an idle queue.

    python bench/bench_fairness.py [--flood 300] [--few 5] [--job-ms 5] [--repeat 3]

Embedded NATS (or MEDMESH_NATS_URL when set). Each scenario runs in a fresh JetStream
topology with svc_infer's consumer settings (batches of 8 filled for 20 ms, two in flight):

  1. alone: clinic B publishes `--few` text jobs to an idle worker;
  2. fair:  the worker (the real `medmesh.lanes.LanedPullConsumer`, as svc_infer runs it) is
     idle, clinic A publishes `--flood` jobs, then clinic B publishes `--few`;
  3. fifo:  the same, with one plain `PullConsumer` over every lane (the behaviour before
     clinic lanes: jobs handed out in publish order), for comparison.

The handler stands in for the model: each batch takes `--job-ms` per job (an asyncio sleep,
the worker awaiting its Predict call), then acks. Latency is from B's publish to B's ack; the
figure is B's slowest job, the floor B's slowest job alone, each the median of `--repeat`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _results import record  # noqa: E402

from medmesh.consumers import PullConsumer  # noqa: E402
from medmesh.jetstream import Topology, connect_nats, ensure_topology  # noqa: E402
from medmesh.lanes import LanedPullConsumer  # noqa: E402
from medmesh.launcher import DEPENDENCY_ENV, EmbeddedDependencies  # noqa: E402
from medmesh.telemetry import configure_logging  # noqa: E402

BATCH = 8
FILL_WAIT_S = 0.02
CONCURRENCY = 2


class Worker:
    """The stand-in model: `job_ms` per job per batch; records when each job was acked."""

    def __init__(self, job_ms: float, expected: int) -> None:
        self.job_s = job_ms / 1000.0
        self.finished: dict[str, float] = {}
        self.order: list[str] = []
        self._expected = expected
        self.all_done = asyncio.Event()

    async def __call__(self, messages: Sequence[Msg]) -> None:
        await asyncio.sleep(self.job_s * len(messages))
        for msg in messages:
            await msg.ack()
        now = time.perf_counter()
        for msg in messages:
            name = msg.data.decode()
            self.finished[name] = now
            self.order.append(name)
        if len(self.finished) >= self._expected:
            self.all_done.set()


async def publish(
    js: JetStreamContext, topology: Topology, clinic: str, count: int
) -> dict[str, float]:
    """`count` jobs of `clinic` on its lane, up to 100 publishes in flight at once (a flood
    lands in the queue faster than the worker takes it); when each was published."""
    subject = topology.lane_subject(topology.infer_text_subject, clinic)
    sent: dict[str, float] = {}

    async def one(name: str) -> None:
        sent[name] = time.perf_counter()
        await js.publish(subject, name.encode())

    for start in range(0, count, 100):
        await asyncio.gather(*(one(f"{clinic}-{n}") for n in range(start, min(count, start + 100))))
    return sent


async def scenario(
    nc: NatsClient, js: JetStreamContext, mode: str, flood: int, few: int, job_ms: float
) -> tuple[float, int]:
    """(B's slowest latency in s, A's jobs finished while B's waited) for one mode."""
    tag = secrets.token_hex(3)
    topology = Topology(subject_root=f"f{tag}", stream_prefix=f"F{tag.upper()}")
    await ensure_topology(js, topology)
    flood = 0 if mode == "alone" else flood
    worker = Worker(job_ms, flood + few)
    spec = topology.infer_text_consumer
    options = {
        "batch_size": BATCH,
        "fetch_timeout_s": 1.0,
        "fill_wait_s": FILL_WAIT_S,
        "concurrency": CONCURRENCY,
    }
    if mode == "fifo":
        config = spec.config()
        config.durable_name, config.filter_subject = "fifo", f"{spec.filter_subject}.*"
        consumer: PullConsumer = PullConsumer(js, spec.stream, config, worker, **options)
    else:
        consumer = LanedPullConsumer(nc, js, topology, spec, worker, **options)
    async with AsyncExitStack() as stack:
        await consumer.start(stack)
        await asyncio.sleep(0.2)  # an idle worker, as when the flood starts
        await publish(js, topology, "clinic-a", flood)
        sent = await publish(js, topology, "clinic-b", few)
        await worker.all_done.wait()
    for config in topology.stream_configs():
        await js.delete_stream(config.name)
    latency = max(worker.finished[name] - sent[name] for name in sent)
    # A's jobs that the worker finished while B's jobs were waiting.
    b_from, b_until = min(sent.values()), max(worker.finished[name] for name in sent)
    a_between = sum(
        1
        for name, at in worker.finished.items()
        if name.startswith("clinic-a-") and b_from < at <= b_until
    )
    return latency, a_between


async def run(nats_url: str, flood: int, few: int, job_ms: float, repeat: int) -> None:
    nc, js = await connect_nats(nats_url, name="bench-fairness")
    results: dict[str, list[tuple[float, int]]] = {"alone": [], "fair": [], "fifo": []}
    try:
        for _ in range(repeat):
            for mode, rows in results.items():
                rows.append(await scenario(nc, js, mode, flood, few, job_ms))
    finally:
        await nc.drain()
    latency = {mode: statistics.median(r[0] for r in rows) for mode, rows in results.items()}
    a_before = {mode: statistics.median(r[1] for r in rows) for mode, rows in results.items()}
    print(f"\nclinic B: {few} jobs; clinic A: {flood} jobs queued first; {job_ms:g} ms per job")
    print(f"median of {repeat}: B's slowest job, and A's jobs done while B's waited")
    for mode, label in (
        ("alone", "B alone (floor)"),
        ("fair", "B after A's flood, clinic lanes"),
        ("fifo", "B after A's flood, one FIFO consumer"),
    ):
        print(
            f"  {label:38} {latency[mode] * 1000:8.1f} ms   A done meanwhile: {a_before[mode]:5.0f}"
        )
    fair_ratio = latency["fair"] / latency["alone"]
    fifo_ratio = latency["fifo"] / latency["alone"]
    print(
        f"fairness: B under A's flood / B alone = {fair_ratio:.2f} (one FIFO consumer: "
        f"{fifo_ratio:.2f}); the flood alone would take {flood * job_ms / 1000:.1f} s of work"
    )
    record(
        "fairness",
        f"clinic B's slowest of {few} jobs behind clinic A's {flood}-job flood",
        latency["fair"] * 1000,
        "ms",
        floor=latency["alone"] * 1000,
        floor_name=f"clinic B's {few} jobs on an idle queue",
        ratio=fair_ratio,
        note=(
            f"one FIFO consumer (before clinic lanes): {latency['fifo'] * 1000:.0f} ms, ratio"
            f" {fifo_ratio:.1f}; A's jobs done while B's waited: {a_before['fair']:.0f} with"
            f" lanes, {a_before['fifo']:.0f} FIFO; stand-in model {job_ms:g} ms per job"
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=300, help="clinic A's jobs")
    parser.add_argument("--few", type=int, default=5, help="clinic B's jobs")
    parser.add_argument("--job-ms", type=float, default=5.0, help="stand-in model time per job")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smaller run (100 jobs, once)")
    args = parser.parse_args()
    if args.quick:
        args.flood, args.repeat = 100, 1
    configure_logging("bench", "warning")
    url = os.environ.get(DEPENDENCY_ENV["nats"], "")
    if url:
        asyncio.run(run(url, args.flood, args.few, args.job_ms, args.repeat))
        return
    with (
        tempfile.TemporaryDirectory() as workdir,
        EmbeddedDependencies(Path(workdir) / "deps", os.environ, only=["nats"]) as urls,
    ):
        url = urls[DEPENDENCY_ENV["nats"]]
        asyncio.run(run(url, args.flood, args.few, args.job_ms, args.repeat))


if __name__ == "__main__":
    main()
