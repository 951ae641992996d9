"""Opening a service's dependencies on its exit stack, once, the same way in every service.

Each opener checks the dependency answers (so a misconfigured service fails at start-up, not
on its first request) and registers the matching close on the stack, so shutdown closes them
in reverse order after the gRPC server has drained.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from redis.asyncio import Redis

from medmesh.cache import open_redis
from medmesh.db import Database
from medmesh.jetstream import Topology, connect_nats, ensure_topology
from medmesh.objects import ObjectStore
from medmesh.pool_metrics import watch_database
from medmesh.settings import Settings


async def open_database(settings: Settings, stack: AsyncExitStack) -> Database:
    """The service's PostgreSQL pools (primary, and the read replica when configured)."""
    settings.require("postgres_url")
    database = Database(
        settings.postgres_url,
        read_url=settings.postgres_read_url or None,
        application_name=f"medmesh-{settings.service}",
    )
    await stack.enter_async_context(database)
    watch_database(f"medmesh-{settings.service}", database)  # pool use on /metrics
    return database


async def open_cache(settings: Settings, stack: AsyncExitStack) -> Redis:
    """A Redis client that has answered PING."""
    settings.require("redis_url")
    redis = await open_redis(
        settings.redis_url,
        client_name=f"medmesh-{settings.service}",
        ca_file=settings.redis_ca_file,
    )
    stack.push_async_callback(redis.aclose)
    return redis


@dataclass(frozen=True)
class JetStream:
    """A NATS connection, its JetStream context and the declared topology."""

    nc: NatsClient
    js: JetStreamContext
    topology: Topology


async def open_jetstream(settings: Settings, stack: AsyncExitStack) -> JetStream:
    """Connect to NATS and declare every stream and consumer (idempotent). Drained on exit so
    messages published before shutdown are flushed and consumers stop cleanly."""
    settings.require("nats_url")
    nc, js = await connect_nats(
        settings.nats_url,
        name=f"medmesh-{settings.service}",
        ca_file=settings.nats_ca_file,
        creds_file=settings.nats_creds_file,
    )
    stack.push_async_callback(nc.drain)
    topology = Topology(
        subject_root=settings.subject_root,
        stream_prefix=settings.stream_prefix,
        max_attempts=settings.job_max_attempts,
        ack_wait_s=settings.job_ack_wait_s,
    )
    await ensure_topology(js, topology)
    return JetStream(nc, js, topology)


async def open_object_store(settings: Settings, stack: AsyncExitStack) -> ObjectStore:
    """The four medmesh buckets, created if missing."""
    settings.require("s3_url")
    store = ObjectStore(settings.s3_url, bucket_prefix=settings.s3_bucket_prefix)
    stack.callback(store.close)
    await store.ensure_buckets()
    return store
