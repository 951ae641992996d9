"""A service under test, served in the test's own event loop by the real runtime, and the
test's own clients of what the service uses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from redis.asyncio import Redis

from medmesh.jetstream import connect_nats
from medmesh.objects import ObjectStore
from medmesh.runtime import serve
from medmesh.settings import Settings


@asynccontextmanager
async def served(settings: Settings, setup: Any, **serve_options: Any) -> AsyncIterator[dict]:
    """`medmesh.runtime.serve(settings, setup, ...)` until the block exits (then a clean
    stop, as on SIGTERM); yields what the service wrote to `settings.ready_file` (its
    addresses). A service that fails to start raises its own error here."""
    assert settings.ready_file is not None, "served() needs settings.ready_file"
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, setup, stop=stop, **serve_options))
    try:
        while not settings.ready_file.exists():
            if task.done():
                task.result()
                raise AssertionError(f"{settings.service} stopped before it was ready")
            await asyncio.sleep(0.02)
        yield json.loads(settings.ready_file.read_text())
    finally:
        stop.set()
        await task


@dataclass
class Clients:
    """The test's own connections to what a service uses, named like the service's."""

    js: JetStreamContext
    objects: ObjectStore
    redis: Redis


@asynccontextmanager
async def clients(settings: Settings, name: str) -> AsyncIterator[Clients]:
    """JetStream, S3 (with the service's bucket prefix) and Redis for `settings`; closed
    when the block exits."""
    nc, js = await connect_nats(settings.nats_url, name=name)
    objects = ObjectStore(settings.s3_url, bucket_prefix=settings.s3_bucket_prefix)
    redis = Redis.from_url(settings.redis_url)
    try:
        yield Clients(js, objects, redis)
    finally:
        await nc.drain()
        await redis.aclose()
        objects.close()
