"""The ReportService servicer: proto ↔ domain and nothing else.

RPCs it does not define yet answer UNIMPLEMENTED through the bootstrap; they arrive with the
svc_report issue (HTML/PDF, archive, FHIR delivery, e-mail).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from medmesh.db import Database
from medmesh.objects import ObjectStore
from medmesh.resources import JetStream


@dataclass(frozen=True)
class ReportDependencies:
    """What the report servicer and its workers use."""

    database: Database
    redis: Redis
    objects: ObjectStore
    jetstream: JetStream


class ReportServicer:
    """medmesh.report.v1.ReportService."""

    def __init__(self, dependencies: ReportDependencies) -> None:
        self._dependencies = dependencies
