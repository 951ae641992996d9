"""P6: the cost per job of the queue path stays flat as the backlog grows (no O(n) scans).

    python bench/bench_queue.py [--sizes 100,1000,10000] [--repeat 2]

Embedded PostgreSQL and NATS (or the MEDMESH_* URLs when set). For each backlog size N, in a
fresh outbox table and a fresh JetStream topology:

  1. N image jobs (InferenceJob messages, ~200 bytes) are written to the outbox, 100 rows per
     transaction (setup, not timed), so N jobs wait at once;
  2. relay   = the real `OutboxRelay.publish_pending` (batches of 100 in `seq` order through
     the partial pending index, one Msg-Id'd publish per row, the rows marked published)
     called until nothing is pending: seconds per job;
  3. consume = the real `PullConsumer` shared by every worker (svc_infer's settings: batches
     of 8, two in flight) bound to svc_infer's image-job consumer, with a handler that parses
     each job and acks it, until all N are acked: seconds per job.

The figure is the cost per job at the largest N against the cost per job at the smallest,
each the best of `--repeat`: flat means a ratio near 1 (goal <= 1.2); an O(n) scan per job
would make it grow with N.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from nats.aio.msg import Msg
from psycopg import sql

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _results import record  # noqa: E402

from gen.medmesh.common.v1 import FileKind  # noqa: E402
from gen.medmesh.events.v1 import InferenceJob  # noqa: E402
from medmesh.consumers import PullConsumer  # noqa: E402
from medmesh.db import Database  # noqa: E402
from medmesh.jetstream import Topology, connect_nats, ensure_topology  # noqa: E402
from medmesh.launcher import DEPENDENCY_ENV, EmbeddedDependencies  # noqa: E402
from medmesh.outbox import OUTBOX_TABLE_SQL, Outbox, OutboxRelay  # noqa: E402
from medmesh.telemetry import configure_logging  # noqa: E402

FILL_CHUNK = 100
GOAL = 1.2


def _job() -> InferenceJob:
    return InferenceJob(
        job_id=str(uuid.uuid4()),
        clinic_id="bench-clinic",
        study_id=str(uuid.uuid4()),
        file_id=str(uuid.uuid4()),
        kind=FileKind.IMAGE_PNG,
        bucket="medical-images-raw",
        object_key=f"bench-clinic/{uuid.uuid4()}/{uuid.uuid4()}",
        sha256=secrets.token_hex(32),
        content_type="image/png",
        enqueue_time=datetime.now(UTC),
        study_file_count=1,
    )


def _fresh_database(postgres_url: str) -> str:
    name = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlsplit(postgres_url)._replace(path=f"/{name}").geturl()


async def one_size(database: Database, nats_url: str, size: int) -> tuple[float, float, float]:
    """(relay seconds per job, consume seconds per job, the relay's last-tenth / first-tenth
    batch time) with `size` jobs queued."""
    tag = secrets.token_hex(3)
    outbox = Outbox(f"q{tag}")
    async with database.transaction() as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(outbox.schema)))
        await conn.execute(
            sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(outbox.schema))
        )
        await conn.execute(OUTBOX_TABLE_SQL)
    topology = Topology(subject_root=f"b{tag}", stream_prefix=f"B{tag.upper()}")
    async with AsyncExitStack() as stack:
        nc, js = await connect_nats(nats_url, name="bench-queue")
        stack.push_async_callback(nc.drain)
        await ensure_topology(js, topology)
        for start in range(0, size, FILL_CHUNK):
            count = min(FILL_CHUNK, size - start)
            entries = [(topology.infer_image_subject, _job(), None, None) for _ in range(count)]
            async with database.transaction() as conn:
                await outbox.enqueue_many(conn, entries)

        relay = OutboxRelay(outbox, database, js)
        started = time.perf_counter()
        published, batch_s = 0, []
        while True:
            batch_started = time.perf_counter()
            batch = await relay.publish_pending()
            if not batch:
                break
            batch_s.append(time.perf_counter() - batch_started)
            published += batch
        relay_s = time.perf_counter() - started
        tenth = max(1, len(batch_s) // 10)
        first, last = sum(batch_s[:tenth]) / tenth, sum(batch_s[-tenth:]) / tenth
        print(
            f"  N={size:6}: relay batch of {relay.options.batch_size}: first tenth"
            f" {first * 1000:6.1f} ms, last tenth {last * 1000:6.1f} ms (ratio {last / first:4.2f})"
        )
        assert published == size, (published, size)

        acked = 0
        done = asyncio.Event()

        async def handle(messages: Sequence[Msg]) -> None:
            nonlocal acked
            for message in messages:
                InferenceJob.FromString(message.data)
                await message.ack()
            acked += len(messages)
            if acked >= size:
                done.set()

        spec = topology.infer_image_consumer
        consumer = PullConsumer(
            js,
            spec.stream,
            spec.config(),
            handle,
            declare=False,
            batch_size=8,
            fetch_timeout_s=1.0,
            fill_wait_s=0.02,
            concurrency=2,
        )
        started = time.perf_counter()
        await consumer.start(stack)
        await done.wait()
        consume_s = time.perf_counter() - started
        await consumer.stop()
        for stream in {spec.stream for spec in topology.consumer_specs()}:
            await js.delete_stream(stream)
    async with database.transaction() as conn:
        await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(outbox.schema)))
    return relay_s / size, consume_s / size, last / first


async def run(sizes: list[int], repeat: int) -> None:
    with (
        tempfile.TemporaryDirectory() as workdir,
        EmbeddedDependencies(Path(workdir) / "deps", os.environ, only=["postgres", "nats"]) as urls,
    ):
        database_url = _fresh_database(urls[DEPENDENCY_ENV["postgres"]])
        async with Database(database_url, application_name="bench-queue") as database:
            relay: dict[int, list[float]] = {size: [] for size in sizes}
            drift: dict[int, list[float]] = {size: [] for size in sizes}
            consume: dict[int, list[float]] = {size: [] for size in sizes}
            for _ in range(repeat):
                for size in sizes:
                    r, c, d = await one_size(database, urls[DEPENDENCY_ENV["nats"]], size)
                    relay[size].append(r)
                    drift[size].append(d)
                    consume[size].append(c)
                    print(
                        f"  N={size:6}: relay {r * 1e6:7.1f} us/job, consume {c * 1e6:7.1f} us/job"
                    )
    small, large = min(sizes), max(sizes)
    print(f"\ncost per job (best of {repeat}), us")
    print(f"{'queued':>8} {'relay':>9} {'consume':>9}")
    for size in sizes:
        print(f"{size:8} {min(relay[size]) * 1e6:9.1f} {min(consume[size]) * 1e6:9.1f}")
    for name, figures in (
        ("relay (outbox → JetStream)", relay),
        ("consume (PullConsumer)", consume),
    ):
        at_small, at_large = min(figures[small]), min(figures[large])
        ratio = at_large / at_small
        middle = ", ".join(
            f"N={size}: {min(figures[size]) * 1e6:.0f} us"
            for size in sizes
            if size not in (small, large)
        )
        print(f"P6 {name}: {large} vs {small} queued: {ratio:.2f} (goal <= {GOAL})")
        if figures is relay:
            drifts = ", ".join(f"{d:.2f}" for d in drift[large])
            drift_note = f"batch time, last tenth of the {large} / first tenth: {drifts}"
            middle = f"{middle}; {drift_note}" if middle else drift_note
        record(
            "bench_queue.py",
            f"P6: {name} per job with {large} queued",
            round(at_large * 1e6, 1),
            "us/job",
            floor=round(at_small * 1e6, 1),
            floor_name=f"per job with {small} queued",
            ratio=round(ratio, 2),
            goal=f"<= {GOAL} (flat)",
            met=ratio <= GOAL,
            note=middle,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    configure_logging("bench", "warning")
    asyncio.run(run([int(s) for s in args.sizes.split(",")], args.repeat))


if __name__ == "__main__":
    main()
