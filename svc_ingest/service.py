"""The IngestService servicer: proto ↔ domain and nothing else.

RPCs it does not define yet answer UNIMPLEMENTED through the bootstrap; they arrive with the
svc_ingest issue (streamed validated upload, outbox → JetStream, WatchStudy).
"""

from __future__ import annotations

from medmesh.db import Database
from medmesh.objects import ObjectStore
from medmesh.resources import JetStream


class IngestServicer:
    """medmesh.ingest.v1.IngestService."""

    def __init__(self, database: Database, objects: ObjectStore, jetstream: JetStream) -> None:
        self._database = database
        self._objects = objects
        self._jetstream = jetstream
