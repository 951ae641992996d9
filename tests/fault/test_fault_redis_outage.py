"""Redis stopped: svc_infer keeps serving results from PostgreSQL (every read counted as a
cache miss), its workers keep storing results, and svc_auth's sign-in limits fail closed
(Login answers UNAVAILABLE: an attempt that cannot be counted is not allowed, so a Redis
outage never opens the door to password guessing). Redis comes back with its data (AOF) and
no restart of anything: the cache is used again, and a study's list cached before the outage
does not hide the result stored during it. Then Redis hangs (SIGSTOP): reads still answer
from PostgreSQL, and Login UNAVAILABLE, within a client's deadline."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.fernet import Fernet
from fault_stack import CLINIC, FaultStack, RestartableRedis, running_infer, wait_for_count
from integration.auth.auth_harness import Mailbox, auth_settings, running_auth
from support.infer import CONTENT_TYPES
from support.tokens import TokenFactory

from gen.medmesh.auth.v1 import LoginRequest
from gen.medmesh.common.v1 import FileKind
from gen.medmesh.events.v1 import InferenceJob
from gen.medmesh.infer.v1 import GetResultRequest, ListResultsRequest
from medmesh.jetstream import connect_nats, publish_message
from medmesh.objects import RAW_IMAGES, ObjectStore
from svc_infer.cache import CACHE_READS

# A client's deadline for a read while Redis hangs: generous beside the cache's 1 s bound per
# call, far below the 2 s x 4 per call (twice per read) the Redis client would wait.
HUNG_DEADLINE_S = 6.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    """A Redis server of this test's own, so it can stop and start it."""
    server = RestartableRedis(tmp_path / "redis-data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def auth_on_own_redis(
    own_redis: RestartableRedis, database_url: str, name_prefix: str, tmp_path: Path
) -> AsyncIterator[Any]:
    """svc_auth in this process on the test's Redis (no SMTP: sign-in sends no mail)."""
    kek = Fernet.generate_key().decode()
    settings = auth_settings(
        postgres_url=database_url,
        redis_url=own_redis.url,
        prefix=name_prefix,
        smtp_url="",
        ready_file=tmp_path / "auth.ready.json",
        kek=kek,
    )
    async with running_auth(settings, Mailbox(), kek) as auth:
        yield auth


def reads(read: str, outcome: str) -> float:
    """The result cache's read counter so far."""
    return CACHE_READS.labels(read, outcome)._value.get()


async def publish_note(
    stack: FaultStack, js: Any, objects: ObjectStore, study_id: str, n: int
) -> InferenceJob:
    """One note of `study_id` in the raw bucket and its text job, as svc_ingest makes them."""
    data = f"Note {n}: productive cough and fever for three days, crackles right base.".encode()
    file_id = str(uuid.uuid4())
    key = f"{CLINIC}/{study_id}/{file_id}"
    content_type = CONTENT_TYPES[FileKind.TEXT_NOTE]
    await objects.put_bytes(RAW_IMAGES, key, data, content_type=content_type)
    job = InferenceJob(
        job_id=str(uuid.uuid4()),
        clinic_id=CLINIC,
        study_id=study_id,
        file_id=file_id,
        kind=FileKind.TEXT_NOTE,
        bucket=RAW_IMAGES,
        object_key=key,
        content_type=content_type,
        sha256=hashlib.sha256(data).hexdigest(),
        study_file_count=2,
    )
    await publish_message(js, stack.topology.infer_text_subject, job, msg_id=job.job_id)
    return job


async def result_of(stack: FaultStack, file_id: str) -> str:
    """The result name of a file once the worker stored it."""
    await wait_for_count(
        stack, f"SELECT count(*) FROM infer.results WHERE file_id = '{file_id}'", 1, []
    )
    rows = await stack.query(
        "SELECT study_id, result_id FROM infer.results WHERE file_id = %s", (file_id,)
    )
    return f"studies/{rows[0]['study_id']}/results/{rows[0]['result_id']}"


async def test_redis_down_results_come_from_postgres_sign_in_fails_closed_and_the_cache_returns(
    fault_stack: FaultStack,
    own_redis: RestartableRedis,
    auth_on_own_redis: Any,
    tokens: TokenFactory,
    model_server_address: str,
    fault_objects: ObjectStore,
) -> None:
    stack = fault_stack
    extra = {
        "MEDMESH_INFER_TF_SERVING_ADDR": model_server_address,
        "MEDMESH_INFER_RETRY_BACKOFF_S": "0.5,1",
    }
    auth = auth_on_own_redis
    clinician = await auth.create_user(CLINIC, ("clinician",))
    meta = tokens.metadata_for(user_id="u-1", clinic_id=CLINIC, roles=["clinician"])
    study_id = str(uuid.uuid4())
    nc, js = await connect_nats(stack.base_env["MEDMESH_NATS_URL"], name="fault-redis")
    try:
        async with running_infer(stack, tokens, extra, redis_url=own_redis.url) as (stub, _):
            first = await publish_note(stack, js, fault_objects, study_id, 1)
            first_name = await result_of(stack, first.file_id)
            parent = f"studies/{study_id}"
            before = (
                await stub.get_result(GetResultRequest(name=first_name), metadata=meta)
            ).result
            hits = reads("result", "hit")
            await stub.get_result(GetResultRequest(name=first_name), metadata=meta)
            assert reads("result", "hit") == hits + 1  # the worker cached it
            listed = await stub.list_results(ListResultsRequest(parent=parent), metadata=meta)
            await stub.list_results(ListResultsRequest(parent=parent), metadata=meta)
            assert [r.name for r in listed.results] == [first_name]  # and now the list is cached
            assert (await auth.login(clinician)).access_token

            own_redis.stop()
            unavailable = reads("result", "unavailable")
            during = (
                await stub.get_result(GetResultRequest(name=first_name), metadata=meta)
            ).result
            assert during == before  # served from PostgreSQL
            assert reads("result", "unavailable") == unavailable + 1  # counted as a miss
            # The worker stores a result of the same study meanwhile; its cache writes fail.
            second = await publish_note(stack, js, fault_objects, study_id, 2)
            second_name = await result_of(stack, second.file_id)
            listed_during = await stub.list_results(
                ListResultsRequest(parent=parent), metadata=meta
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await auth.login(clinician, password=secrets.token_hex(8))
            with pytest.raises(grpc.aio.AioRpcError) as refused_right:
                await auth.login(clinician)

            own_redis.start()  # same port, same data (AOF): the list cached before is back
            listed_after = await stub.list_results(ListResultsRequest(parent=parent), metadata=meta)
            hits = reads("result", "hit"), reads("study", "hit")
            await stub.get_result(GetResultRequest(name=second_name), metadata=meta)
            await stub.get_result(GetResultRequest(name=second_name), metadata=meta)
            await stub.list_results(ListResultsRequest(parent=parent), metadata=meta)
            hits_after = reads("result", "hit"), reads("study", "hit")
            assert (await auth.login(clinician)).access_token

            # Redis hangs (SIGSTOP: connections accepted, nothing answered): reads still
            # come from PostgreSQL within a client's deadline, not after the Redis client's
            # 2 s socket timeout times its retries for each cache call.
            assert own_redis.pid is not None
            os.kill(own_redis.pid, signal.SIGSTOP)
            try:
                hung = await stub.get_result(
                    GetResultRequest(name=first_name), metadata=meta, timeout=HUNG_DEADLINE_S
                )
                listed_hung = await stub.list_results(
                    ListResultsRequest(parent=parent), metadata=meta, timeout=HUNG_DEADLINE_S
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused_hung:
                    await auth.stub.login(
                        LoginRequest(email=clinician, password="a wrong one, quickly"),
                        timeout=HUNG_DEADLINE_S,
                    )
            finally:
                os.kill(own_redis.pid, signal.SIGCONT)
    finally:
        await nc.drain()

    assert [r.name for r in listed_during.results] == [first_name, second_name]
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert refused_right.value.code() == grpc.StatusCode.UNAVAILABLE
    # The cached list from before the outage must not hide the result stored during it.
    assert [r.name for r in listed_after.results] == [first_name, second_name]
    # The cache is used again: the second GetResult and the second ListResults are hits.
    assert hits_after[0] == hits[0] + 1
    assert hits_after[1] == hits[1] + 1
    assert hung.result == before
    # Sign-in fails closed quickly too, not after the client's timeouts times its retries.
    assert refused_hung.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [r.name for r in listed_hung.results] == [first_name, second_name]
