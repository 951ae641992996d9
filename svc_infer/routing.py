"""The registry in action: registry changes in transactions (with audit rows), routing of
studies to versions for the workers, and the first registration of a served model.

The rules themselves are pure functions in `registry.py`; this module only loads, applies
and stores. Every change locks the model row first, so concurrent admins serialise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import structlog

from gen.medmesh.common.v1 import AnalysisKind
from gen.medmesh.infer.v1 import ModelVersionState
from medmesh.audit import Actor, record_audit_event
from medmesh.db import Connection, Database
from medmesh.errors import AlreadyExists, FailedPrecondition, NotFound
from medmesh.objects import ML_MODELS, ObjectStore
from svc_infer import registry
from svc_infer import registry_store as store
from svc_infer.catalog import (
    ModelCatalog,
    input_spec_from_card,
    labels_from_card,
    preprocessing_version_for,
)
from svc_infer.pages import decode_token, encode_token, page_size
from svc_infer.registry import Assignment, InputSpec, Model, ModelVersion, TrafficWeight
from svc_infer.tfserving import TFServingClient

log = structlog.get_logger(__name__)

SYSTEM_ACTOR = Actor("svc_infer", ("service",))
SYSTEM_CLINIC = "system"


class Registry:
    """ListModels .. RollbackModel, and `route` for the workers."""

    def __init__(
        self,
        database: Database,
        objects: ObjectStore,
        *,
        client: TFServingClient | None = None,
        catalog: ModelCatalog | None = None,
    ) -> None:
        self._database = database
        self._objects = objects
        self._client = client
        self._catalog = catalog

    async def list_models(self, size: int, token: str, clinic_id: str) -> tuple[list[Model], str]:
        """One page of models by name, with result counts in `clinic_id`."""
        limit = page_size(size)
        after = decode_token("models", token, 1)
        async with self._database.read_connection() as conn:
            models = await store.list_models(
                conn, after[0] if after else None, limit + 1, clinic_id
            )
        more = len(models) > limit
        models = models[:limit]
        return models, encode_token("models", [models[-1].name]) if more else ""

    async def get_model(self, name: str, clinic_id: str | None = None) -> Model:
        """One model, with its result counts in `clinic_id` when given; NotFound when it is not
        registered."""
        async with self._database.read_connection() as conn:
            model = await store.load_model(conn, name, counts_for=clinic_id)
        if model is None:
            raise NotFound(f"models/{name} does not exist")
        return model

    async def register(
        self,
        name: str,
        *,
        kind: AnalysisKind,
        version: int,
        artifact_uri: str,
        labels: Sequence[str],
        input_spec: InputSpec | None,
        preprocessing_version: str,
        actor: Actor,
        clinic_id: str,
        check_artifact: bool = True,
    ) -> ModelVersion:
        """Register a SavedModel version (REGISTERED: no traffic until split or promoted)."""
        async with self._database.read_connection() as conn:
            existing = await store.load_model(conn, name)
        prefix = registry.validate_registration(
            name,
            version=version,
            kind=kind,
            artifact_uri=artifact_uri,
            labels=labels,
            input_spec=input_spec,
            preprocessing_version=preprocessing_version,
            existing=existing,
            buckets=frozenset({ML_MODELS, self._objects.bucket(ML_MODELS)}),
        )
        if check_artifact:
            try:
                await self._objects.size(ML_MODELS, prefix + "saved_model.pb")
            except NotFound:
                raise FailedPrecondition(f"no saved_model.pb at {artifact_uri}") from None
        assert input_spec is not None  # validate_registration checked it
        record = ModelVersion(
            model=name,
            version=version,
            state=ModelVersionState.REGISTERED,
            labels=tuple(labels),
            artifact_uri=artifact_uri,
            input_spec=input_spec,
            preprocessing_version=preprocessing_version,
        )
        async with self._database.transaction() as conn:
            await store.insert_version(conn, record, kind)
            await _audit(conn, actor, clinic_id, "model.register", name, {"version": version})
            model = await store.load_model(conn, name)
        assert model is not None  # inserted above
        return model.version(version)

    async def _change(
        self,
        name: str,
        action: str,
        detail: dict[str, object],
        decide: registry.RoutingChangeFn,
        actor: Actor,
        clinic_id: str,
    ) -> Model:
        async with self._database.transaction() as conn:
            model = await store.load_model(conn, name, for_update=True)
            if model is None:
                raise NotFound(f"models/{name} does not exist")
            change = decide(model)
            await store.apply_routing(conn, name, change)
            await _audit(conn, actor, clinic_id, action, name, detail)
            updated = await store.load_model(conn, name, counts_for=clinic_id)
        assert updated is not None  # locked above
        log.info("registry.change", model=name, action=action, **detail)
        return updated

    async def set_split(
        self, name: str, split: Sequence[TrafficWeight], *, actor: Actor, clinic_id: str
    ) -> Model:
        """New studies are assigned by `split`; assigned studies keep their version."""
        detail: dict[str, object] = {"split": {str(w.version): w.weight for w in split}}
        return await self._change(
            name,
            "model.split",
            detail,
            lambda m: registry.validate_split(m, split),
            actor,
            clinic_id,
        )

    async def promote(self, name: str, version: int, *, actor: Actor, clinic_id: str) -> Model:
        """Make `version` stable with all traffic."""
        return await self._change(
            name,
            "model.promote",
            {"version": version},
            lambda m: registry.promote(m, version),
            actor,
            clinic_id,
        )

    async def rollback(self, name: str, *, actor: Actor, clinic_id: str) -> Model:
        """Back to the previous stable version."""
        return await self._change(name, "model.rollback", {}, registry.rollback, actor, clinic_id)

    async def route(
        self, name: str, kind: AnalysisKind, studies: Iterable[tuple[str, str]]
    ) -> tuple[Model, dict[str, Assignment]]:
        """The serving version of each (study id, clinic id): the stored assignment while its
        version serves, else one by the split (stored, so the study stays on it)."""
        async with self._database.read_connection() as conn:
            model = await store.load_model(conn, name)
        if model is None or not registry.effective_split(model):
            model = await self.bootstrap(name, kind)
        clinics = dict(sorted(set(studies)))  # study id -> clinic id
        assignments: dict[str, Assignment] = {}
        changed: list[tuple[str, str, Assignment]] = []
        async with self._database.transaction() as conn:
            stored = await store.load_assignments(conn, name, list(clinics))
            for study_id, clinic_id in clinics.items():
                previous = stored.get(study_id)
                chosen = registry.keep_or_reassign(model, study_id, previous)
                if previous is None or previous.version != chosen.version:
                    changed.append((study_id, clinic_id, chosen))
                assignments[study_id] = chosen
            if changed:
                await store.save_assignments(conn, name, changed)
        return model, assignments

    async def bootstrap(self, name: str, kind: AnalysisKind) -> Model:
        """First start: register every version the model server serves (from their cards)
        and promote the newest, so a fresh stack works without registry calls."""
        if self._client is None or self._catalog is None:
            raise FailedPrecondition(f"models/{name} has no serving version")
        versions = await self._client.available_versions(name)
        if not versions:
            raise FailedPrecondition(f"the model server serves no version of {name}")
        for number in versions:
            card = await self._catalog.card(name, number)
            # Another worker or replica may have registered it meanwhile.
            with contextlib.suppress(AlreadyExists):
                await self.register(
                    name,
                    kind=kind,
                    version=number,
                    artifact_uri=f"s3://{ML_MODELS}/{name}/{number}/",
                    labels=labels_from_card(card),
                    input_spec=input_spec_from_card(card),
                    preprocessing_version=preprocessing_version_for(card),
                    actor=SYSTEM_ACTOR,
                    clinic_id=SYSTEM_CLINIC,
                    check_artifact=False,  # the server serving it is proof enough
                )
        model = await self.get_model(name)
        if registry.effective_split(model):
            return model
        log.info("registry.bootstrap", model=name, versions=versions, stable=versions[-1])
        return await self.promote(name, versions[-1], actor=SYSTEM_ACTOR, clinic_id=SYSTEM_CLINIC)


async def _audit(
    conn: Connection,
    actor: Actor,
    clinic_id: str,
    action: str,
    model: str,
    detail: dict[str, object],
) -> None:
    await record_audit_event(
        conn,
        clinic_id=clinic_id,
        actor=actor,
        action=action,
        resource=f"models/{model}",
        detail=detail,
    )
