"""A process running the real service bootstrap (`run_service`) whose setup crashes in native
code (`faulthandler._sigsegv()`, a real SIGSEGV), for the crash-traceback test."""

from __future__ import annotations

import faulthandler
from contextlib import AsyncExitStack

from medmesh.runtime import ServiceParts
from medmesh.settings import Settings


async def setup_that_segfaults(_settings: Settings, _stack: AsyncExitStack) -> ServiceParts:
    """Crash the way cygrpc did under load: a segmentation fault, no Python exception."""
    faulthandler._sigsegv()
    raise AssertionError("unreachable: the process died")


if __name__ == "__main__":
    from medmesh.runtime import run_service

    run_service("ingest", setup_that_segfaults)
