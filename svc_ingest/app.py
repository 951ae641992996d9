"""Wiring: open svc_ingest's dependencies on the exit stack and build its servicers.

Order on the stack (closed in reverse): database, S3, JetStream, then the outbox relay, the
status consumer, the WatchStudy fan-out and the upload sweeper, so background work stops
before the connections it uses close.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from medmesh.audit import DeniedAccessRecorder
from medmesh.auth import TokenVerifier
from medmesh.outbox import Outbox, OutboxRelay, RelayOptions
from medmesh.resources import open_database, open_jetstream, open_object_store
from medmesh.runtime import ServiceParts
from medmesh.settings import Settings
from svc_ingest.audit_trail import AuditTrail
from svc_ingest.config import IngestConfig
from svc_ingest.events import StatusConsumer, StatusHub
from svc_ingest.presigned import PresignedUploads
from svc_ingest.service import INGEST_RULES, INGEST_SERVICE, IngestServicer
from svc_ingest.status import StudyEvents
from svc_ingest.studies import Studies
from svc_ingest.sweeper import UploadSweeper
from svc_ingest.uploads import Uploads

__all__ = ["INGEST_SERVICE", "build", "setup"]


async def build(
    settings: Settings,
    stack: AsyncExitStack,
    *,
    config: IngestConfig | None = None,
    verifier: TokenVerifier | None = None,
    relay_options: RelayOptions | None = None,
) -> ServiceParts:
    """The service with explicit config (tests pass theirs; `setup` reads the environment)."""
    config = config or IngestConfig.from_extra(settings.extra)
    database = await open_database(settings, stack)
    objects = await open_object_store(settings, stack)
    jetstream = await open_jetstream(settings, stack)
    outbox = Outbox("ingest")
    events = StudyEvents(outbox, jetstream.topology)
    hub = StatusHub()
    await hub.start(jetstream.js, events.status_subject, stack)
    await StatusConsumer(database, jetstream.js, events).start(stack)
    await OutboxRelay.start(
        outbox,
        database,
        jetstream.js,
        stack,
        listen_url=settings.postgres_url,
        on_published=events.on_jobs_published,
        options=relay_options,
    )
    uploads = Uploads(database, objects, outbox, events, config)
    await UploadSweeper(database, objects, config).start(stack)
    servicer = IngestServicer(
        Studies(database, objects, hub),
        uploads,
        PresignedUploads(database, objects, uploads, config),
        config,
        AuditTrail(database),
    )
    return ServiceParts(
        servicers={INGEST_SERVICE: servicer},
        role_rules={INGEST_SERVICE: INGEST_RULES},
        verifier=verifier,
        on_denied=DeniedAccessRecorder(database),
    )


async def setup(settings: Settings, stack: AsyncExitStack) -> ServiceParts:
    """PostgreSQL (studies, outbox), S3 (raw images) and JetStream (jobs, status events)."""
    return await build(settings, stack)
