"""Wiring: open svc_ingest's dependencies on the exit stack and build its servicers."""

from __future__ import annotations

from contextlib import AsyncExitStack

from medmesh.resources import open_database, open_jetstream, open_object_store
from medmesh.runtime import ServiceParts
from medmesh.settings import Settings
from svc_ingest.service import IngestServicer

INGEST_SERVICE = "medmesh.ingest.v1.IngestService"


async def setup(settings: Settings, stack: AsyncExitStack) -> ServiceParts:
    """PostgreSQL (studies, outbox), S3 (raw images) and JetStream (jobs, status events)."""
    database = await open_database(settings, stack)
    objects = await open_object_store(settings, stack)
    jetstream = await open_jetstream(settings, stack)
    return ServiceParts(servicers={INGEST_SERVICE: IngestServicer(database, objects, jetstream)})
