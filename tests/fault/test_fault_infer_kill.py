"""kill -9 of svc_infer in the middle of a batch, several times during one run of jobs: every
job ends with exactly one result (none lost, none duplicated, no dead letter), and each
result is announced once.

200 jobs with 3 kills (MEDMESH_FAULT_SMALL=1: 60 jobs).
The ack wait is shortened (MEDMESH_JOB_ACK_WAIT_S=2) so a killed batch comes back quickly;
attempts stay at the default 4, so a job caught in all three killed batches still gets a
fourth attempt."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fault_stack import (
    FaultStack,
    ServiceProcess,
    enqueue_notes,
    full_run,
    infer_env,
    wait_for_count,
)
from support.jetstream import published

from gen.medmesh.events.v1 import DeadLetterEnvelope, ResultReady
from medmesh.objects import ObjectStore

KILLS = 3
RESULTS_SQL = "SELECT count(*) FROM infer.results"


async def in_hand(js: Any, stack: FaultStack) -> int:
    """Jobs delivered to a worker and not yet acked (a batch in progress)."""
    spec = stack.topology.infer_text_consumer
    info = await js.consumer_info(spec.stream, spec.durable)
    return int(info.num_ack_pending or 0)


async def kill_mid_batch(js: Any, stack: FaultStack, process: ServiceProcess) -> int:
    """SIGKILL the worker while it holds unacked jobs; how many it held."""
    while True:
        held = await in_hand(js, stack)
        if held:
            await process.kill9()
            return held
        await asyncio.sleep(0.01)


async def test_svc_infer_killed_mid_batch_three_times_loses_and_duplicates_no_job(
    fault_stack: FaultStack,
    fault_js: Any,
    fault_objects: ObjectStore,
    model_server_address: str,
) -> None:
    total = 200 if full_run() else 60
    began = time.monotonic()
    worker = fault_stack.service("infer", "infer", **infer_env(fault_stack, model_server_address))
    start_times = [await worker.start()]
    jobs = await enqueue_notes(fault_stack, fault_js, fault_objects, total)

    held: list[int] = []
    for kill in range(1, KILLS + 1):
        # Spread the kills over the run: after about 1/5, 2/5, 3/5 of the results.
        await wait_for_count(fault_stack, RESULTS_SQL, total * kill // (KILLS + 2), [worker])
        held.append(await kill_mid_batch(fault_js, fault_stack, worker))
        start_times.append(await worker.start())
    await wait_for_count(fault_stack, RESULTS_SQL, total, [worker])
    await asyncio.sleep(3)  # past the ack wait: a late duplicate would show by now
    elapsed = time.monotonic() - began

    rows = await fault_stack.query(
        "SELECT file_id, count(*) AS n FROM infer.results GROUP BY file_id"
    )
    assert {r["file_id"]: r["n"] for r in rows} == {job.file_id: 1 for job in jobs}
    assert all(held), "every kill hit a batch in hand"
    assert await fault_stack.count("SELECT count(*) FROM infer.dead_letters") == 0
    dlq = fault_stack.topology.dlq_subject(fault_stack.topology.infer_text_subject)
    assert await published(fault_js, dlq, DeadLetterEnvelope, count=0, timeout_s=1) == []
    ready = await published(
        fault_js, fault_stack.topology.result_ready_subject, ResultReady, count=total
    )
    assert sorted(e.file_id for e in ready) == sorted(job.file_id for job in jobs)
    spec = fault_stack.topology.infer_text_consumer
    info = await fault_js.consumer_info(spec.stream, spec.durable)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    print(  # noqa: T201 - the measured numbers, for the README (pytest -s)
        f"\nfault kill -9: {total} jobs, {KILLS} kills (jobs in hand: {held}), "
        f"starts {[round(s, 1) for s in start_times]} s, total {elapsed:.1f} s"
    )
