"""The shared dependency clients against real servers: JetStream topology, publish / decode /
dead-letter, S3 buckets and objects, PostgreSQL pools, Redis, and what each does when its
server cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import nats
import pytest
import urllib3
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, RetentionPolicy, StorageType
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.events.v1 import DeadLetterEnvelope, InferenceJob, ReportJob
from medmesh.cache import open_redis
from medmesh.db import Database
from medmesh.errors import DependencyUnavailable, NotFound
from medmesh.jetstream import (
    Topology,
    connect_nats,
    decode_message,
    ensure_topology,
    publish_dead_letter,
    publish_message,
)
from medmesh.objects import LOGICAL_BUCKETS, RAW_IMAGES, REPORTS_ARCHIVE, ObjectStore


@pytest.fixture
def topology(name_prefix: str) -> Topology:
    """A topology whose streams and subjects belong to this test alone."""
    return Topology(subject_root=name_prefix, stream_prefix=name_prefix.upper())


@pytest.fixture
async def nats_js(
    nats_url: str, topology: Topology
) -> AsyncIterator[tuple[NatsClient, JetStreamContext]]:
    """A NATS connection and JetStream context; this test's streams are deleted afterwards."""
    nc, js = await connect_nats(nats_url, name="test-clients")
    yield nc, js
    for config in topology.stream_configs():
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(config.name or "")
    await nc.close()


@pytest.fixture
async def js(nats_js: tuple[NatsClient, JetStreamContext], topology: Topology) -> JetStreamContext:
    """A JetStream context with this test's topology declared."""
    _, context = nats_js
    await ensure_topology(context, topology)
    return context


@pytest.fixture
def object_store(s3_url: str, name_prefix: str) -> Iterator[ObjectStore]:
    """An object store whose buckets carry this test's prefix."""
    store = ObjectStore(s3_url, bucket_prefix=f"{name_prefix}-")
    yield store
    store.close()


# JetStream.


async def all_stream_names(js: JetStreamContext) -> list[str]:
    """Every stream's name: the list comes in pages (256 a page), and the session's JetStream
    holds the streams of every test that ran before this one."""
    names: list[str] = []
    while page := await js.streams_info(offset=len(names)):
        names += [info.config.name for info in page]
    return names


async def test_streams_and_consumers_are_declared_idempotently_as_configured(
    nats_js: tuple[NatsClient, JetStreamContext], topology: Topology
) -> None:
    _, js = nats_js
    await ensure_topology(js, topology)
    await ensure_topology(js, topology)

    for name, subject in [
        (topology.jobs_stream, f"{topology.subject_root}.jobs.>"),
        (topology.events_stream, f"{topology.subject_root}.events.>"),
        (topology.dlq_stream, f"{topology.subject_root}.dlq.>"),
    ]:
        config = (await js.stream_info(name)).config
        assert config.subjects == [subject]
        assert config.storage == StorageType.FILE
        assert config.retention == RetentionPolicy.LIMITS
        assert config.max_age == 24 * 3600
        assert config.duplicate_window == 120
    assert [spec.durable for spec in topology.consumer_specs()] == [
        "infer-image",
        "infer-text",
        "report",
        "deliver",
    ]
    for spec in topology.consumer_specs():
        consumer = (await js.consumer_info(topology.jobs_stream, spec.durable)).config
        assert consumer.ack_policy == AckPolicy.EXPLICIT
        # The attempt limit is the consumers' (medmesh.settle): the server never drops a job.
        assert consumer.max_deliver == -1
        assert spec.max_attempts == topology.max_attempts == 4
        assert consumer.ack_wait == spec.ack_wait_s == 30
        assert not consumer.backoff
        assert consumer.filter_subject == spec.filter_subject
    streams = await all_stream_names(js)
    assert sorted(n for n in streams if n and n.startswith(topology.stream_prefix + "_")) == sorted(
        [topology.jobs_stream, topology.events_stream, topology.dlq_stream]
    )


async def test_changed_stream_limits_are_applied_to_the_existing_stream(
    nats_js: tuple[NatsClient, JetStreamContext], topology: Topology
) -> None:
    _, js = nats_js
    await ensure_topology(js, topology)
    shorter = Topology(topology.subject_root, topology.stream_prefix, max_age_s=3600.0)
    await ensure_topology(js, shorter)

    assert (await js.stream_info(topology.jobs_stream)).config.max_age == 3600


async def test_published_job_reaches_its_consumer_with_the_producers_trace_context(
    js: JetStreamContext, topology: Topology
) -> None:
    job = InferenceJob(
        job_id="job-1",
        clinic_id="clinic-1",
        study_id="study-1",
        file_id="file-1",
        kind=FileKind.IMAGE_PNG,
        bucket="medical-images-raw",
        object_key="clinic-1/study-1/file-1.png",
        content_type="image/png",
    )
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("upload study") as parent:
        ack = await publish_message(js, topology.infer_image_subject, job, msg_id="outbox-1")
    spec = topology.infer_image_consumer
    sub = await js.pull_subscribe_bind(spec.durable, spec.stream)
    [msg] = await sub.fetch(1, timeout=5)
    received, context = decode_message(msg, InferenceJob)
    await msg.ack()

    assert ack.stream == topology.jobs_stream
    assert received == job
    assert msg.headers is not None
    assert msg.headers["Nats-Msg-Id"] == "outbox-1"
    producer = trace.get_current_span(context).get_span_context()
    assert producer.trace_id == parent.get_span_context().trace_id
    assert producer.is_remote


async def test_same_msg_id_published_twice_is_stored_once(
    js: JetStreamContext, topology: Topology
) -> None:
    job = InferenceJob(job_id="job-2", clinic_id="clinic-1", study_id="study-2")
    first = await publish_message(js, topology.infer_text_subject, job, msg_id="outbox-2")
    second = await publish_message(js, topology.infer_text_subject, job, msg_id="outbox-2")

    assert not first.duplicate
    assert second.duplicate
    assert second.seq == first.seq
    assert (await js.stream_info(topology.jobs_stream)).state.messages == 1


async def test_failed_job_copied_to_the_dlq_keeps_payload_subject_and_error(
    js: JetStreamContext, topology: Topology
) -> None:
    job = ReportJob(job_id="job-3", clinic_id="clinic-9", study_id="study-3", report_id="r-3")
    await publish_message(js, topology.report_subject, job, msg_id="outbox-3")
    spec = topology.report_consumer
    sub = await js.pull_subscribe_bind(spec.durable, spec.stream)
    [msg] = await sub.fetch(1, timeout=5)

    await publish_dead_letter(js, topology, msg, "renderer crashed", clinic_id=job.clinic_id)
    await publish_dead_letter(js, topology, msg, "renderer crashed", clinic_id=job.clinic_id)
    await msg.term()

    dlq_subject = f"{topology.subject_root}.dlq.jobs.report"
    stored = await js.get_last_msg(topology.dlq_stream, dlq_subject)
    envelope = DeadLetterEnvelope.FromString(stored.data or b"")
    assert ReportJob.FromString(envelope.payload) == job
    assert envelope.original_subject == topology.report_subject
    assert envelope.error == "renderer crashed"
    assert envelope.attempts == 1
    assert envelope.msg_id == "outbox-3"
    assert envelope.clinic_id == "clinic-9"
    assert envelope.headers["Nats-Msg-Id"] == "outbox-3"
    assert envelope.last_failure_time is not None
    assert (stored.headers or {})["Medmesh-Clinic-Id"] == "clinic-9"
    assert (await js.stream_info(topology.dlq_stream)).state.messages == 1  # stored once


async def test_publishing_where_no_stream_listens_raises_dependency_unavailable(
    js: JetStreamContext, topology: Topology
) -> None:
    job = InferenceJob(job_id="job-4")
    with pytest.raises(DependencyUnavailable) as raised:
        await publish_message(js, f"{topology.subject_root}.nowhere", job)

    assert raised.value.dependency == "nats"


# Object storage.


async def test_buckets_are_ensured_idempotently_and_an_object_round_trips(
    object_store: ObjectStore, name_prefix: str
) -> None:
    created = await object_store.ensure_buckets()
    created_again = await object_store.ensure_buckets()
    await object_store.put_bytes(
        RAW_IMAGES, "clinic-1/scan.png", b"\x89PNG-bytes", content_type="image/png"
    )

    assert sorted(created) == sorted(f"{name_prefix}-{name}" for name in LOGICAL_BUCKETS)
    assert created_again == []
    assert await object_store.get_bytes(RAW_IMAGES, "clinic-1/scan.png") == b"\x89PNG-bytes"
    assert await object_store.size(RAW_IMAGES, "clinic-1/scan.png") == 10

    await object_store.remove(RAW_IMAGES, "clinic-1/scan.png")
    with pytest.raises(NotFound):
        await object_store.get_bytes(RAW_IMAGES, "clinic-1/scan.png")


async def test_presigned_urls_upload_and_download_without_credentials(
    object_store: ObjectStore,
) -> None:
    await object_store.ensure_buckets()
    put_url = await object_store.presigned_put_url(REPORTS_ARCHIVE, "r/1.pdf")
    get_url = await object_store.presigned_get_url(REPORTS_ARCHIVE, "r/1.pdf")
    http = urllib3.PoolManager()

    uploaded = http.request("PUT", put_url, body=b"%PDF-1.7 report")
    downloaded = http.request("GET", get_url)

    assert uploaded.status == 200
    assert downloaded.status == 200
    assert downloaded.data == b"%PDF-1.7 report"


# PostgreSQL and Redis.


async def insert_then_fail(db: Database, statement: str) -> None:
    """Run `statement` in a transaction that then fails."""
    async with db.transaction() as conn:
        await conn.execute(statement)
        raise RuntimeError("the request failed after the insert")


async def test_database_returns_dict_rows_and_rolls_back_a_failed_transaction(
    database_url: str,
) -> None:
    async with Database(database_url, read_url=database_url) as db:
        async with db.transaction() as conn:
            await conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        with pytest.raises(RuntimeError):
            await insert_then_fail(db, "INSERT INTO notes VALUES (1, 'lost')")
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO notes VALUES (2, 'kept')")
        async with db.read_connection() as conn:
            rows = await (await conn.execute("SELECT id, body FROM notes")).fetchall()

    assert not db.has_replica  # the same URL needs no second pool
    assert rows == [{"id": 2, "body": "kept"}]


async def test_redis_client_round_trips_a_value(redis_url: str, name_prefix: str) -> None:
    redis = await open_redis(redis_url)
    try:
        await redis.set(f"{name_prefix}:k", b"v", ex=30)
        assert await redis.get(f"{name_prefix}:k") == b"v"
    finally:
        await redis.delete(f"{name_prefix}:k")
        await redis.aclose()


async def test_redis_commands_beyond_the_pool_size_wait_for_a_connection_instead_of_failing(
    redis_url: str, name_prefix: str
) -> None:
    redis = await open_redis(redis_url, max_connections=2)
    try:
        # Four commands that each hold a connection for 1 s on a pool of two: the last two
        # wait for a free connection (redis-py's default pool raised "Too many connections").
        popped = await asyncio.gather(
            *(redis.blpop([f"{name_prefix}:empty-{i}"], timeout=1) for i in range(4))
        )
        assert popped == [None, None, None, None]
    finally:
        await redis.aclose()


# Unreachable dependencies.


async def _open_postgres(port: int) -> None:
    await Database(f"postgresql://medmesh@127.0.0.1:{port}/medmesh", open_timeout_s=1).open()


async def _open_redis(port: int) -> None:
    await open_redis(f"redis://127.0.0.1:{port}/0", retries=1)


async def _open_nats(port: int) -> None:
    await connect_nats(f"nats://127.0.0.1:{port}", name="test", connect_timeout_s=1)


async def _open_s3(port: int) -> None:
    await ObjectStore(f"http://key:secret@127.0.0.1:{port}", retries=1).ensure_buckets()


@pytest.mark.parametrize(
    ("dependency", "open_client"),
    [
        ("postgres", _open_postgres),
        ("redis", _open_redis),
        ("nats", _open_nats),
        ("s3", _open_s3),
    ],
)
async def test_unreachable_dependency_raises_dependency_unavailable_naming_it(
    dependency: str, open_client: Callable[[int], Awaitable[None]], unused_tcp_port: int
) -> None:
    with pytest.raises(DependencyUnavailable) as raised:
        await open_client(unused_tcp_port)

    assert raised.value.dependency == dependency
