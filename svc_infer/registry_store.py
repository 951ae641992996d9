"""The model registry's SQL (models, versions, routing, sticky study assignments). Functions
take a connection, so callers decide the transaction; names are schema-qualified (`infer.`)
because service pools do not set search_path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from gen.medmesh.common.v1 import AnalysisKind
from gen.medmesh.infer.v1 import ModelVersionState, TrafficArm
from medmesh.db import Connection
from medmesh.errors import AlreadyExists
from svc_infer.registry import (
    Assignment,
    InputSpec,
    Model,
    ModelVersion,
    RoutingChange,
    TrafficWeight,
)


def _input_spec(document: Mapping[str, Any]) -> InputSpec:
    return InputSpec(
        signature_name=document.get("signature_name", "serving_default"),
        input_name=document.get("input_name", ""),
        output_name=document.get("output_name", ""),
        shape=tuple(int(x) for x in document.get("shape", ())),
        dtype=document.get("dtype", "float32"),
        mean=tuple(float(x) for x in document.get("mean", ())),
        std=tuple(float(x) for x in document.get("std", ())),
        color_order=document.get("color_order", ""),
        max_sequence_length=int(document.get("max_sequence_length", 0)),
    )


def _input_spec_json(spec: InputSpec) -> dict[str, Any]:
    return {
        "signature_name": spec.signature_name,
        "input_name": spec.input_name,
        "output_name": spec.output_name,
        "shape": list(spec.shape),
        "dtype": spec.dtype,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "color_order": spec.color_order,
        "max_sequence_length": spec.max_sequence_length,
    }


def _version(row: Mapping[str, Any], counts: Mapping[TrafficArm, int]) -> ModelVersion:
    return ModelVersion(
        model=row["model"],
        version=int(row["version"]),
        state=ModelVersionState(row["state"]),
        labels=tuple(row["labels"]),
        artifact_uri=row["artifact_uri"],
        input_spec=_input_spec(row["input_spec"]),
        preprocessing_version=row["preprocessing_version"],
        create_time=row["create_time"],
        result_count=sum(counts.values()),
        stable_result_count=counts.get(TrafficArm.STABLE, 0),
        canary_result_count=counts.get(TrafficArm.CANARY, 0),
    )


async def _result_counts(
    conn: Connection, models: Sequence[str], clinic_id: str
) -> dict[tuple[str, int], dict[TrafficArm, int]]:
    """One clinic's results per (model, version) and arm, for all these models in one grouped
    SELECT. The registry is shared, but how much each clinic analyses is its own business."""
    cur = await conn.execute(
        """
        SELECT model_name, model_version, arm, count(*) AS results
        FROM infer.results WHERE clinic_id = %s AND model_name = ANY(%s)
        GROUP BY model_name, model_version, arm
        """,
        (clinic_id, list(models)),
    )
    counts: dict[tuple[str, int], dict[TrafficArm, int]] = {}
    for row in await cur.fetchall():
        key = (row["model_name"], int(row["model_version"]))
        counts.setdefault(key, {})[TrafficArm(row["arm"])] = int(row["results"])
    return counts


async def _models(
    conn: Connection, where: str, params: Sequence[Any], *, counts_for: str | None
) -> list[Model]:
    cur = await conn.execute(
        f"SELECT * FROM infer.models {where}",  # noqa: S608 - `where` is a constant of ours
        params,
    )
    rows = await cur.fetchall()
    if not rows:
        return []
    cur = await conn.execute(
        "SELECT * FROM infer.model_versions WHERE model = ANY(%s) ORDER BY model, version",
        ([r["name"] for r in rows],),
    )
    version_rows = await cur.fetchall()
    names = [r["name"] for r in rows]
    results = await _result_counts(conn, names, counts_for) if counts_for is not None else {}
    versions: dict[str, list[ModelVersion]] = {}
    for row in version_rows:
        versions.setdefault(row["model"], []).append(
            _version(row, results.get((row["model"], int(row["version"])), {}))
        )
    return [
        Model(
            name=r["name"],
            kind=AnalysisKind(r["kind"]),
            stable_version=int(r["stable_version"]),
            previous_stable_version=int(r["previous_stable_version"]),
            traffic_split=tuple(
                TrafficWeight(int(w["version"]), int(w["weight"])) for w in r["traffic_split"]
            ),
            versions=tuple(versions.get(r["name"], ())),
            create_time=r["create_time"],
            update_time=r["update_time"],
        )
        for r in rows
    ]


async def load_model(
    conn: Connection, name: str, *, for_update: bool = False, counts_for: str | None = None
) -> Model | None:
    """One model with its versions; `for_update` serialises registry changes to it;
    `counts_for` (a clinic id) adds each version's result counts in that clinic (one grouped
    SELECT over infer.results: the API's answers, not job routing)."""
    lock = " FOR UPDATE" if for_update else ""
    models = await _models(conn, "WHERE name = %s" + lock, (name,), counts_for=counts_for)
    return models[0] if models else None


async def list_models(
    conn: Connection, after: str | None, limit: int, counts_for: str
) -> list[Model]:
    """Models by name after `after`, at most `limit`, with their versions' result counts in
    clinic `counts_for` (one grouped SELECT for the whole page)."""
    page = (after or "", limit)
    return await _models(
        conn, "WHERE name > %s ORDER BY name LIMIT %s", page, counts_for=counts_for
    )


async def insert_version(conn: Connection, version: ModelVersion, kind: AnalysisKind) -> None:
    """Create the model if needed and add a REGISTERED version; AlreadyExists if it exists."""
    await conn.execute(
        "INSERT INTO infer.models (name, kind) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
        (version.model, int(kind)),
    )
    try:
        async with conn.transaction():  # a savepoint: the caller's transaction survives
            await conn.execute(
                """
                INSERT INTO infer.model_versions
                    (model, version, state, labels, artifact_uri, input_spec,
                     preprocessing_version)
                VALUES (%s, %s, %s, %s, %s, %s, %s)
                """,
                (
                    version.model,
                    version.version,
                    int(version.state),
                    list(version.labels),
                    version.artifact_uri,
                    Jsonb(_input_spec_json(version.input_spec)),
                    version.preprocessing_version,
                ),
            )
    except psycopg.errors.UniqueViolation:
        raise AlreadyExists(
            f"models/{version.model}/versions/{version.version} already exists"
        ) from None
    await conn.execute(
        "UPDATE infer.models SET update_time = now() WHERE name = %s", (version.model,)
    )


async def apply_routing(conn: Connection, name: str, change: RoutingChange) -> None:
    """Store a model's new stable/previous versions, split and version states."""
    split = [{"version": w.version, "weight": w.weight} for w in change.traffic_split]
    await conn.execute(
        """
        UPDATE infer.models
        SET stable_version = %s, previous_stable_version = %s, traffic_split = %s,
            update_time = now()
        WHERE name = %s
        """,
        (change.stable_version, change.previous_stable_version, Jsonb(split), name),
    )
    for version, state in change.states.items():
        await conn.execute(
            "UPDATE infer.model_versions SET state = %s WHERE model = %s AND version = %s",
            (int(state), name, version),
        )


async def load_assignments(
    conn: Connection, model: str, study_ids: Sequence[str]
) -> dict[str, Assignment]:
    """The versions these studies were assigned to (studies without one are absent)."""
    cur = await conn.execute(
        "SELECT study_id, version, arm FROM infer.study_assignments"
        " WHERE model = %s AND study_id = ANY(%s)",
        (model, list(study_ids)),
    )
    return {
        row["study_id"]: Assignment(int(row["version"]), TrafficArm(row["arm"]))
        for row in await cur.fetchall()
    }


async def save_assignments(
    conn: Connection, model: str, assignments: Sequence[tuple[str, str, Assignment]]
) -> None:
    """Remember (or replace) the version of each (study id, clinic id, assignment), in one
    statement."""
    await conn.execute(
        """
        INSERT INTO infer.study_assignments (model, study_id, clinic_id, version, arm)
        SELECT %s, study_id, clinic_id, version, arm
        FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::smallint[])
            AS given (study_id, clinic_id, version, arm)
        ON CONFLICT (model, study_id)
        DO UPDATE SET version = EXCLUDED.version, arm = EXCLUDED.arm, assign_time = now()
        """,
        (
            model,
            [study for study, _, _ in assignments],
            [clinic for _, clinic, _ in assignments],
            [a.version for _, _, a in assignments],
            [int(a.arm) for _, _, a in assignments],
        ),
    )
