"""PostgreSQL stopped: svc_ingest's RPCs fail at once with UNAVAILABLE ("server unreachable":
the pool saw its connection attempt refused and did not wait out its acquire timeout), a note
refused meanwhile leaves no file row and no object in the raw bucket, and when PostgreSQL
returns svc_ingest (in this process), svc_infer and svc_report (real processes that lived
through the outage) work again without a restart: new uploads get their results and every
study its report."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.fernet import Fernet
from fault_stack import (
    Clinic,
    FaultStack,
    RestartablePostgres,
    infer_env,
    running_ingest,
    wait_for_count,
)
from integration.auth.auth_harness import Mailbox, auth_settings, running_auth
from support.tokens import TokenFactory

from gen.medmesh.ingest.v1 import CreateStudyRequest, CreateTextNoteRequest, GetStudyRequest
from gen.medmesh.report.v1 import ReportStatus
from medmesh.db import Database
from medmesh.errors import DependencyUnavailable
from medmesh.migrate import migrate_all
from medmesh.objects import RAW_IMAGES, ObjectStore

RESULTS_SQL = "SELECT count(*) FROM infer.results"
READY_SQL = f"SELECT count(*) FROM report.reports WHERE status = {int(ReportStatus.READY)}"
# A generous bound, not a timing assert: an RPC must not wait out the pool's 5 s acquire timeout.
UNAVAILABLE_WITHIN_S = 4.0
RECOVERY_WITHIN_S = 30.0
# The pool test's acquire timeout: far longer than any answer may take while PostgreSQL is down.
LONG_ACQUIRE_TIMEOUT_S = 120.0
SIGN_IN_FAILURES = 3  # the sign-in test's limit of failed attempts per account


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[RestartablePostgres]:
    """A PostgreSQL server of this test's own, so it can stop and start it."""
    server = RestartablePostgres(tmp_path / "pg-data")
    server.start()
    yield server
    server.stop()


async def refused(call: Any) -> tuple[grpc.StatusCode, float, str]:
    """The status code a call fails with, how long it took to fail, and its details."""
    began = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    return failure.value.code(), time.monotonic() - began, failure.value.details() or ""


async def test_a_pool_fails_at_once_while_postgres_is_down_and_reconnects_when_it_returns(
    own_postgres: RestartablePostgres,
) -> None:
    """With an acquire timeout of two minutes, every checkout during the outage (the one
    already waiting when the server went, the ones after) raises "server unreachable" long
    before it: the pool's refused connection attempt ends the wait. Before the fix each
    waited the whole acquire timeout (the asyncio.timeout below would fire)."""
    async with Database(
        own_postgres.url, min_size=2, max_size=4, acquire_timeout_s=LONG_ACQUIRE_TIMEOUT_S
    ) as db:
        async with db.read_connection() as conn:
            assert await (await conn.execute("SELECT 1 AS one")).fetchone() == {"one": 1}
        own_postgres.stop()
        failures: list[DependencyUnavailable] = []
        async with asyncio.timeout(LONG_ACQUIRE_TIMEOUT_S / 4):
            for _ in range(5):
                with pytest.raises(DependencyUnavailable) as failure:
                    async with db.transaction() as conn:
                        await conn.execute("SELECT 1")
                failures.append(failure.value)
        assert not db.reachable()
        own_postgres.start()
        async with asyncio.timeout(RECOVERY_WITHIN_S):
            while True:
                try:
                    async with db.transaction() as conn:
                        row = await (await conn.execute("SELECT 2 AS two")).fetchone()
                    break
                except DependencyUnavailable:
                    await asyncio.sleep(0.2)
        assert db.reachable()
    assert row == {"two": 2}
    assert all(f.dependency == "postgres" for f in failures)
    assert all("server unreachable" in f.detail for f in failures[1:]), failures


async def test_postgres_down_fails_fast_with_unavailable_and_services_recover_without_restart(
    fault_stack: FaultStack,
    own_postgres: RestartablePostgres,
    tokens: TokenFactory,
    model_server_address: str,
    fault_objects: ObjectStore,
) -> None:
    # Every schema first: svc_report reads svc_ingest's and svc_infer's read-model views.
    await asyncio.to_thread(
        migrate_all, {**fault_stack.base_env, "MEDMESH_POSTGRES_URL": own_postgres.url}
    )
    worker = fault_stack.service(
        "infer",
        "infer",
        MEDMESH_POSTGRES_URL=own_postgres.url,
        **infer_env(fault_stack, model_server_address),
    )
    reporter = fault_stack.service(
        "report",
        "report",
        MEDMESH_POSTGRES_URL=own_postgres.url,
        MEDMESH_JOB_ACK_WAIT_S="2",
        MEDMESH_REPORT_RETRY_BACKOFF_S="0.5,1",
    )
    await asyncio.gather(worker.start(), reporter.start())
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
        await wait_for_count(stack, RESULTS_SQL, len(clinic.file_ids), [worker, reporter])
        # svc_report (a process that lived through the outage) reports every study.
        await wait_for_count(stack, READY_SQL, len(clinic.file_ids), [worker, reporter])
        got = await stub.get_study(GetStudyRequest(name=study.name), metadata=auth)

    assert [code for code, _, _ in outcomes] == [grpc.StatusCode.UNAVAILABLE] * 3
    # Each refused by the pool's view of the server, not by its acquire timeout running out.
    assert all("server unreachable" in details for _, _, details in outcomes), outcomes
    assert "no free connection" not in repr(outcomes)
    assert while_recovering <= {grpc.StatusCode.UNAVAILABLE}
    assert max(seconds for _, seconds, _ in outcomes) < UNAVAILABLE_WITHIN_S
    assert list(got.study.files) == []  # the note refused during the outage was not kept
    bucket = fault_objects.bucket(RAW_IMAGES)
    prefix = f"clinic-a/{study.study_id}/"
    listed = fault_objects.client.list_objects(bucket, prefix=prefix, recursive=True)
    assert [o.object_name for o in listed] == []  # and left no object behind
    rows = await stack.query("SELECT file_id, count(*) AS n FROM infer.results GROUP BY file_id")
    assert {r["file_id"]: r["n"] for r in rows} == {f: 1 for f in clinic.file_ids}
    print(  # noqa: T201 - the measured numbers, for the README (pytest -s)
        f"\nfault PostgreSQL outage: UNAVAILABLE after "
        f"{[round(s, 2) for _, s, _ in outcomes]} s; svc_ingest serving again "
        f"{recovered_s:.1f} s after PostgreSQL returned"
    )


@pytest.fixture
async def auth_on_own_postgres(
    own_postgres: RestartablePostgres, redis_url: str, name_prefix: str, tmp_path: Path
) -> AsyncIterator[Any]:
    """svc_auth in this process on the test's PostgreSQL, three sign-in failures allowed per
    account (no SMTP: sign-in sends no mail)."""
    kek = Fernet.generate_key().decode()
    settings = auth_settings(
        postgres_url=own_postgres.url,
        redis_url=redis_url,
        prefix=name_prefix,
        smtp_url="",
        ready_file=tmp_path / "auth.ready.json",
        kek=kek,
        extra={"MEDMESH_AUTH_LOGIN_LIMIT_ACCOUNT": f"{SIGN_IN_FAILURES}/900"},
    )
    async with running_auth(settings, Mailbox(), kek) as auth:
        yield auth


async def test_sign_in_during_a_postgres_outage_is_unavailable_and_costs_the_account_no_attempt(
    own_postgres: RestartablePostgres, auth_on_own_postgres: Any
) -> None:
    """Login while PostgreSQL is down answers UNAVAILABLE at once, and those calls (a client
    retrying) are not counted as failed sign-ins: when PostgreSQL returns, the account signs
    in with no restart. Before the fix each counted in Redis, and the account was locked out
    (RESOURCE_EXHAUSTED even with the right password) by its own client's retries."""
    auth = auth_on_own_postgres
    address = await auth.create_user("clinic-a", ("clinician",))
    assert (await auth.login(address)).access_token
    own_postgres.stop()
    outcomes = [await refused(auth.login(address)) for _ in range(SIGN_IN_FAILURES + 2)]
    own_postgres.start()
    answer: Any = None
    async with asyncio.timeout(RECOVERY_WITHIN_S):
        while answer is None or answer == grpc.StatusCode.UNAVAILABLE:
            await asyncio.sleep(0.2)
            try:
                answer = await auth.login(address)
            except grpc.aio.AioRpcError as exc:
                answer = exc.code()
    assert [code for code, _, _ in outcomes] == [grpc.StatusCode.UNAVAILABLE] * len(outcomes)
    assert all("postgres" in details for _, _, details in outcomes), outcomes
    assert not isinstance(answer, grpc.StatusCode), answer  # signed in, not locked out
    assert answer.access_token
