"""A process running the real service bootstrap with a deliberately slow RPC, for the
graceful-shutdown test: `python tests/integration/slow_server.py` with MEDMESH_READY_FILE set."""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack

from gen.medmesh.ingest.v1 import GetStudyRequest, GetStudyResponse, Study
from medmesh.auth import StaticJwks, TokenVerifier
from medmesh.identity import PUBLIC
from medmesh.runtime import ServiceParts
from medmesh.settings import Settings

INGEST = "medmesh.ingest.v1.IngestService"
SLOW_RPC_SECONDS = 1.5


class SlowIngest:
    """GetStudy takes SLOW_RPC_SECONDS, long enough to be in flight when SIGTERM arrives."""

    async def get_study(self, request: GetStudyRequest, _context: object) -> GetStudyResponse:
        await asyncio.sleep(SLOW_RPC_SECONDS)
        return GetStudyResponse(study=Study(name=request.name))


async def setup(_settings: Settings, _stack: AsyncExitStack) -> ServiceParts:
    """No dependencies: just the slow servicer."""
    return ServiceParts(
        servicers={INGEST: SlowIngest()},
        role_rules={INGEST: {"GetStudy": PUBLIC}},
        verifier=TokenVerifier(StaticJwks({"keys": []}), issuer="medmesh", audience="medmesh"),
    )


if __name__ == "__main__":
    from medmesh.runtime import run_service

    os.environ.setdefault("MEDMESH_GRACE_PERIOD_S", "5")
    run_service("ingest", setup)
