"""NATS stopped while clinics keep uploading and svc_infer (a real process) keeps consuming:
every upload is accepted during the outage (the transactional outbox holds the jobs), and
once NATS is back every file gets exactly one result; the worker reconnects by itself.

NATS is stopped for the issue's 30 s (MEDMESH_FAULT_SMALL=1: 10 s)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_stack import Clinic, FaultStack, full_run, infer_env, running_ingest, wait_for_count
from support.tokens import TokenFactory

from medmesh.launcher import NatsServer

RESULTS_SQL = "SELECT count(*) FROM infer.results"


class RestartableNats(NatsServer):
    """nats-server that comes back on the same port with the same JetStream store."""

    def allocate_ports(self) -> None:
        """Keep the first ports on restarts (clients reconnect to the same URL)."""
        if not self.port:
            super().allocate_ports()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[RestartableNats]:
    """A NATS server of this test's own, so it can stop and start it."""
    server = RestartableNats(tmp_path / "nats-data")
    server.start()
    yield server
    server.stop()


async def test_uploads_continue_through_a_nats_outage_and_every_job_is_processed_after(
    fault_stack: FaultStack,
    own_nats: RestartableNats,
    tokens: TokenFactory,
    model_server_address: str,
) -> None:
    outage_s = 30.0 if full_run() else 10.0
    worker = fault_stack.service(
        "infer",
        "infer",
        MEDMESH_NATS_URL=own_nats.url,
        **infer_env(fault_stack, model_server_address),
    )
    await worker.start()
    async with running_ingest(fault_stack, tokens, nats_url=own_nats.url) as stub:
        clinic = Clinic(stub, tokens)
        for n in range(5):
            await clinic.upload(n)
        await wait_for_count(fault_stack, RESULTS_SQL, 5, [worker])

        own_nats.stop()
        began = time.monotonic()
        n = 5
        while time.monotonic() - began < outage_s:
            await clinic.upload(n)  # every call must succeed: NATS is not on the upload path
            n += 1
            await asyncio.sleep(0.2)
        during = n - 5
        pending = await fault_stack.count(
            "SELECT count(*) FROM ingest.outbox WHERE published_at IS NULL"
        )
        own_nats.start()
        back = time.monotonic()

        await wait_for_count(fault_stack, RESULTS_SQL, n, [worker])
        caught_up_s = time.monotonic() - back

    rows = await fault_stack.query(
        "SELECT file_id, count(*) AS n FROM infer.results GROUP BY file_id"
    )
    assert {r["file_id"]: r["n"] for r in rows} == {f: 1 for f in clinic.file_ids}
    assert pending >= during  # the jobs of the outage waited in the outbox, not in memory
    assert await fault_stack.count("SELECT count(*) FROM infer.dead_letters") == 0
    print(  # noqa: T201 - the measured numbers, for the README (pytest -s)
        f"\nfault NATS outage {outage_s:.0f} s: {during} uploads accepted during it "
        f"(slowest call {max(clinic.latencies_s):.2f} s), {n} files, all results "
        f"{caught_up_s:.1f} s after NATS returned"
    )
