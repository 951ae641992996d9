"""PostgreSQL stopped: svc_ingest's RPCs fail with UNAVAILABLE within the pool's acquire
timeout (5 s) instead of hanging, a note refused meanwhile leaves no file row and no object
in the raw bucket, and when PostgreSQL returns svc_ingest (in this process) and svc_infer
(a real process) work again without a restart: new uploads get their results."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fault_stack import Clinic, FaultStack, infer_env, running_ingest, wait_for_count
from support.tokens import TokenFactory

from gen.medmesh.ingest.v1 import CreateStudyRequest, CreateTextNoteRequest, GetStudyRequest
from medmesh.launcher.postgres import PostgresServer
from medmesh.objects import RAW_IMAGES, ObjectStore

RESULTS_SQL = "SELECT count(*) FROM infer.results"
UNAVAILABLE_WITHIN_S = 7.0  # the pool's 5 s acquire timeout, and some slack for 2 busy cores
RECOVERY_WITHIN_S = 30.0


class RestartablePostgres(PostgresServer):
    """PostgreSQL that comes back on the same port with the same data."""

    def allocate_ports(self) -> None:
        """Keep the first port on restarts (pools reconnect to the same URL)."""
        if not self.port:
            super().allocate_ports()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[RestartablePostgres]:
    """A PostgreSQL server of this test's own, so it can stop and start it."""
    server = RestartablePostgres(tmp_path / "pg-data")
    server.start()
    yield server
    server.stop()


async def refused(call: Any) -> tuple[grpc.StatusCode, float]:
    """The status code a call fails with, and how long it took to fail."""
    began = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    return failure.value.code(), time.monotonic() - began


async def test_postgres_down_fails_fast_with_unavailable_and_services_recover_without_restart(
    fault_stack: FaultStack,
    own_postgres: RestartablePostgres,
    tokens: TokenFactory,
    model_server_address: str,
    fault_objects: ObjectStore,
) -> None:
    worker = fault_stack.service(
        "infer",
        "infer",
        MEDMESH_POSTGRES_URL=own_postgres.url,
        **infer_env(fault_stack, model_server_address),
    )
    await worker.start()
    stack = fault_stack
    stack.database_url = own_postgres.url  # count results in the test's own PostgreSQL
    async with running_ingest(stack, tokens, postgres_url=own_postgres.url) as stub:
        clinic = Clinic(stub, tokens)
        for n in range(3):
            await clinic.upload(n)
        await wait_for_count(stack, RESULTS_SQL, 3, [worker])
        auth = tokens.metadata_for(user_id="u-1", clinic_id="clinic-a", roles=["clinician"])
        created = await stub.create_study(CreateStudyRequest(patient_ref="P-x"), metadata=auth)
        study = created.study

        own_postgres.stop()
        outcomes = [
            await refused(stub.create_study(CreateStudyRequest(patient_ref="P-y"), metadata=auth)),
            await refused(
                stub.create_text_note(
                    CreateTextNoteRequest(parent=study.name, text="written while PG is down"),
                    metadata=auth,
                )
            ),
            await refused(stub.get_study(GetStudyRequest(name=study.name), metadata=auth)),
        ]
        own_postgres.start()
        back = time.monotonic()

        # No restart of anything: the pools reconnect on their own.
        while_recovering: set[grpc.StatusCode] = set()
        while True:
            try:
                await clinic.upload(100)
                break
            except grpc.aio.AioRpcError as exc:
                while_recovering.add(exc.code())
            assert time.monotonic() - back < RECOVERY_WITHIN_S, "svc_ingest did not recover"
            await asyncio.sleep(0.5)
        recovered_s = time.monotonic() - back
        for n in range(101, 103):
            await clinic.upload(n)
        await wait_for_count(stack, RESULTS_SQL, len(clinic.file_ids), [worker])
        got = await stub.get_study(GetStudyRequest(name=study.name), metadata=auth)

    assert [code for code, _ in outcomes] == [grpc.StatusCode.UNAVAILABLE] * 3
    assert while_recovering <= {grpc.StatusCode.UNAVAILABLE}
    assert max(seconds for _, seconds in outcomes) < UNAVAILABLE_WITHIN_S
    assert list(got.study.files) == []  # the note refused during the outage was not kept
    bucket = fault_objects.bucket(RAW_IMAGES)
    prefix = f"clinic-a/{study.study_id}/"
    listed = fault_objects.client.list_objects(bucket, prefix=prefix, recursive=True)
    assert [o.object_name for o in listed] == []  # and left no object behind
    rows = await stack.query("SELECT file_id, count(*) AS n FROM infer.results GROUP BY file_id")
    assert {r["file_id"]: r["n"] for r in rows} == {f: 1 for f in clinic.file_ids}
    print(  # noqa: T201 - the measured numbers, for the README (pytest -s)
        f"\nfault PostgreSQL outage: UNAVAILABLE after "
        f"{[round(s, 2) for _, s in outcomes]} s; svc_ingest serving again "
        f"{recovered_s:.1f} s after PostgreSQL returned"
    )
