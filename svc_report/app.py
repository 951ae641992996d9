"""Wiring: open svc_report's dependencies on the exit stack and build its servicers."""

from __future__ import annotations

from contextlib import AsyncExitStack

from medmesh.resources import open_cache, open_database, open_jetstream, open_object_store
from medmesh.runtime import ServiceParts
from medmesh.settings import Settings
from svc_report.service import ReportDependencies, ReportServicer

REPORT_SERVICE = "medmesh.report.v1.ReportService"


async def setup(settings: Settings, stack: AsyncExitStack) -> ServiceParts:
    """PostgreSQL (report history), Redis (cached results), S3 (archive), JetStream."""
    dependencies = ReportDependencies(
        database=await open_database(settings, stack),
        redis=await open_cache(settings, stack),
        objects=await open_object_store(settings, stack),
        jetstream=await open_jetstream(settings, stack),
    )
    return ServiceParts(servicers={REPORT_SERVICE: ReportServicer(dependencies)})
