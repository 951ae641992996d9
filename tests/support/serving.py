"""A service under test, served in the test's own event loop by the real runtime."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

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
