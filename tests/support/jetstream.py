"""Reading what services published to JetStream, from a test."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy


async def published(
    js: JetStreamContext, subject: str, cls: Any, *, count: int = 1, timeout_s: float = 30
) -> list[Any]:
    """Every message on `subject` so far, decoded as `cls` (a betterproto2 message class):
    read from the start of its stream by a throw-away consumer, until at least `count` have
    arrived and a fetch comes back empty, or `timeout_s` passes."""
    stream = await js.find_stream_name_by_subject(subject)
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30),
    )
    found: list[Any] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        while asyncio.get_running_loop().time() < deadline:
            try:
                batch = await sub.fetch(100, timeout=0.5)
            except TimeoutError:
                if len(found) >= count:
                    break
                continue
            for msg in batch:
                await msg.ack()
                found.append(cls.FromString(msg.data))
    finally:
        await sub.unsubscribe()
    return found
