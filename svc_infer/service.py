"""The InferenceService and ModelRegistryService servicers: proto ↔ domain and nothing else.

RPCs they do not define yet answer UNIMPLEMENTED through the bootstrap; they arrive with the
svc_infer issue (JetStream workers, TF Serving client, results, registry).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from medmesh.db import Database
from medmesh.objects import ObjectStore
from medmesh.resources import JetStream


@dataclass(frozen=True)
class InferDependencies:
    """What both servicers of svc_infer use."""

    database: Database
    redis: Redis
    objects: ObjectStore
    jetstream: JetStream


class InferenceServicer:
    """medmesh.infer.v1.InferenceService."""

    def __init__(self, dependencies: InferDependencies) -> None:
        self._dependencies = dependencies


class ModelRegistryServicer:
    """medmesh.infer.v1.ModelRegistryService."""

    def __init__(self, dependencies: InferDependencies) -> None:
        self._dependencies = dependencies
