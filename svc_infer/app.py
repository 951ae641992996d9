"""Wiring: open svc_infer's dependencies on the exit stack and build its servicers."""

from __future__ import annotations

from contextlib import AsyncExitStack

from medmesh.resources import open_cache, open_database, open_jetstream, open_object_store
from medmesh.runtime import ServiceParts
from medmesh.settings import Settings
from svc_infer.service import InferDependencies, InferenceServicer, ModelRegistryServicer

INFERENCE_SERVICE = "medmesh.infer.v1.InferenceService"
REGISTRY_SERVICE = "medmesh.infer.v1.ModelRegistryService"


async def setup(settings: Settings, stack: AsyncExitStack) -> ServiceParts:
    """PostgreSQL (results, registry), Redis (result cache), S3 (models, processed images),
    JetStream (jobs in, events out)."""
    dependencies = InferDependencies(
        database=await open_database(settings, stack),
        redis=await open_cache(settings, stack),
        objects=await open_object_store(settings, stack),
        jetstream=await open_jetstream(settings, stack),
    )
    return ServiceParts(
        servicers={
            INFERENCE_SERVICE: InferenceServicer(dependencies),
            REGISTRY_SERVICE: ModelRegistryServicer(dependencies),
        }
    )
