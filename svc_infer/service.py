"""The InferenceService and ModelRegistryService servicers: proto ↔ domain and nothing else.

Results and dead letters are clinic-scoped (the caller's clinic from the token); the model
registry is platform-wide: every role may read it, changes need an admin (or a service
client, e.g. the model build pipeline) of the operator clinic (MEDMESH_OPERATOR_CLINIC_ID).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gen.medmesh.infer.v1 import (
    GetModelRequest,
    GetModelResponse,
    GetResultImageUrlRequest,
    GetResultImageUrlResponse,
    GetResultRequest,
    GetResultResponse,
    ListDeadLettersRequest,
    ListDeadLettersResponse,
    ListModelsRequest,
    ListModelsResponse,
    ListResultsRequest,
    ListResultsResponse,
    PromoteModelVersionRequest,
    PromoteModelVersionResponse,
    RegisterModelVersionRequest,
    RegisterModelVersionResponse,
    ReplayDeadLetterRequest,
    ReplayDeadLetterResponse,
    RollbackModelRequest,
    RollbackModelResponse,
    SetTrafficSplitRequest,
    SetTrafficSplitResponse,
)
from medmesh.audit import Actor
from medmesh.errors import InvalidArgument
from medmesh.identity import (
    ADMIN,
    ADMINS,
    ANY_ROLE,
    SERVICE,
    OperatorOnly,
    RoleRules,
    current_identity,
)
from svc_infer.convert import (
    dead_letter_to_proto,
    input_spec_from_proto,
    model_to_proto,
    split_from_proto,
    version_to_proto,
)
from svc_infer.deadletters import DeadLetters
from svc_infer.reads import ResultReader
from svc_infer.registry import model_id
from svc_infer.routing import Registry

INFERENCE_SERVICE = "medmesh.infer.v1.InferenceService"
REGISTRY_SERVICE = "medmesh.infer.v1.ModelRegistryService"

# The registry serves every clinic: only the operator clinic's admins and service clients
# (the model build pipeline) change it; their audit rows land under the operator clinic.
REGISTRY_WRITERS = OperatorOnly(frozenset({ADMIN, SERVICE}))

INFERENCE_RULES: RoleRules = {
    "GetResult": ANY_ROLE,
    "ListResults": ANY_ROLE,
    "GetResultImageUrl": ANY_ROLE,
    "ListDeadLetters": ADMINS,
    "ReplayDeadLetter": ADMINS,
}
REGISTRY_RULES: RoleRules = {
    "ListModels": ANY_ROLE,
    "GetModel": ANY_ROLE,
    "RegisterModelVersion": REGISTRY_WRITERS,
    "SetTrafficSplit": REGISTRY_WRITERS,
    "PromoteModelVersion": REGISTRY_WRITERS,
    "RollbackModel": REGISTRY_WRITERS,
}
ROLE_RULES: dict[str, RoleRules] = {
    INFERENCE_SERVICE: INFERENCE_RULES,
    REGISTRY_SERVICE: REGISTRY_RULES,
}


@dataclass(frozen=True)
class InferDependencies:
    """What the servicers use: domain objects built in `app.setup`."""

    results: ResultReader
    dead_letters: DeadLetters
    registry: Registry


def _dead_letter_id(name: str) -> str:
    prefix, _, letter = name.partition("/")
    if prefix != "deadLetters" or not letter or "/" in letter:
        raise InvalidArgument.for_field("name", "must look like deadLetters/{dead_letter}")
    return letter


def _actor() -> tuple[Actor, str]:
    identity = current_identity()
    return Actor(identity.user_id, tuple(sorted(identity.roles))), identity.clinic_id


class InferenceServicer:
    """medmesh.infer.v1.InferenceService."""

    def __init__(self, dependencies: InferDependencies) -> None:
        self._deps = dependencies

    async def get_result(self, request: GetResultRequest, _context: Any) -> GetResultResponse:
        """One result of the caller's clinic."""
        result = await self._deps.results.read(current_identity(), request.name)
        return GetResultResponse(result=result)

    async def list_results(self, request: ListResultsRequest, _context: Any) -> ListResultsResponse:
        """A study's results, oldest first."""
        results, token = await self._deps.results.read_list(
            current_identity(), request.parent, request.page_size, request.page_token
        )
        return ListResultsResponse(results=results, next_page_token=token)

    async def get_result_image_url(
        self, request: GetResultImageUrlRequest, _context: Any
    ) -> GetResultImageUrlResponse:
        """A presigned URL of an image result's processed picture."""
        image = await self._deps.results.image_url(current_identity(), request.name)
        return GetResultImageUrlResponse(
            url=image.url, expire_time=image.expire_time, content_type=image.content_type
        )

    async def list_dead_letters(
        self, request: ListDeadLettersRequest, _context: Any
    ) -> ListDeadLettersResponse:
        """The clinic's dead letters, newest first."""
        rows, token = await self._deps.dead_letters.list(
            current_identity().clinic_id, request.page_size, request.page_token, request.subject
        )
        return ListDeadLettersResponse(
            dead_letters=[dead_letter_to_proto(r) for r in rows], next_page_token=token
        )

    async def replay_dead_letter(
        self, request: ReplayDeadLetterRequest, _context: Any
    ) -> ReplayDeadLetterResponse:
        """Republish a dead letter's job."""
        row = await self._deps.dead_letters.replay(
            current_identity().clinic_id, _dead_letter_id(request.name)
        )
        return ReplayDeadLetterResponse(dead_letter=dead_letter_to_proto(row))


class ModelRegistryServicer:
    """medmesh.infer.v1.ModelRegistryService."""

    def __init__(self, dependencies: InferDependencies) -> None:
        self._registry = dependencies.registry

    async def list_models(self, request: ListModelsRequest, _context: Any) -> ListModelsResponse:
        """Models by name."""
        _, clinic_id = _actor()
        models, token = await self._registry.list_models(
            request.page_size, request.page_token, clinic_id
        )
        return ListModelsResponse(models=[model_to_proto(m) for m in models], next_page_token=token)

    async def get_model(self, request: GetModelRequest, _context: Any) -> GetModelResponse:
        """One model."""
        _, clinic_id = _actor()
        model = await self._registry.get_model(model_id(request.name), clinic_id)
        return GetModelResponse(model=model_to_proto(model))

    async def register_model_version(
        self, request: RegisterModelVersionRequest, _context: Any
    ) -> RegisterModelVersionResponse:
        """A new REGISTERED version."""
        actor, clinic_id = _actor()
        version = await self._registry.register(
            model_id(request.parent, "parent"),
            kind=request.kind,
            version=request.version,
            artifact_uri=request.artifact_uri,
            labels=list(request.labels),
            input_spec=input_spec_from_proto(request.input_spec),
            preprocessing_version=request.preprocessing_version,
            actor=actor,
            clinic_id=clinic_id,
        )
        return RegisterModelVersionResponse(model_version=version_to_proto(version))

    async def set_traffic_split(
        self, request: SetTrafficSplitRequest, _context: Any
    ) -> SetTrafficSplitResponse:
        """New weights per version."""
        actor, clinic_id = _actor()
        model = await self._registry.set_split(
            model_id(request.name),
            split_from_proto(list(request.traffic_split)),
            actor=actor,
            clinic_id=clinic_id,
        )
        return SetTrafficSplitResponse(model=model_to_proto(model))

    async def promote_model_version(
        self, request: PromoteModelVersionRequest, _context: Any
    ) -> PromoteModelVersionResponse:
        """Make a version stable."""
        actor, clinic_id = _actor()
        model = await self._registry.promote(
            model_id(request.name), request.version, actor=actor, clinic_id=clinic_id
        )
        return PromoteModelVersionResponse(model=model_to_proto(model))

    async def rollback_model(
        self, request: RollbackModelRequest, _context: Any
    ) -> RollbackModelResponse:
        """Back to the previous stable version."""
        actor, clinic_id = _actor()
        model = await self._registry.rollback(
            model_id(request.name), actor=actor, clinic_id=clinic_id
        )
        return RollbackModelResponse(model=model_to_proto(model))
