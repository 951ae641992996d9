"""The model registry's rules: registering versions, the traffic split, sticky per-study
assignment, promotion and rollback. Pure functions over plain records; `store.py` persists
them and `service.py` maps them to and from proto.

Assignment: a study is mapped to a bucket 0..9999 by SHA-256 of `<model>:<study id>`, and the
bucket falls into one version's share of the cumulative weights. The hash makes the choice
deterministic (every replica agrees without coordination); the stored assignment keeps it
fixed when the split changes later, so one study is never split between versions. A stored
assignment is abandoned only when its version no longer receives traffic (rolled back or
retired), and then the study is reassigned by the current split.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from gen.medmesh.common.v1 import AnalysisKind
from gen.medmesh.infer.v1 import ModelVersionState, TrafficArm
from medmesh.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from medmesh.objects import ML_MODELS

BUCKETS = 10_000
_MODEL_ID = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_ARTIFACT_URI = re.compile(r"s3://(?P<bucket>[^/]+)/(?P<model>[^/]+)/(?P<version>\d+)/?")


@dataclass(frozen=True)
class TrafficWeight:
    """A version's share of new studies, in percent."""

    version: int
    weight: int


@dataclass(frozen=True)
class InputSpec:
    """How to feed a version (the proto's InputSpec as a plain record)."""

    signature_name: str = "serving_default"
    input_name: str = ""
    output_name: str = ""
    shape: tuple[int, ...] = ()
    dtype: str = "float32"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    color_order: str = ""
    max_sequence_length: int = 0


@dataclass(frozen=True)
class ModelVersion:
    """One registered SavedModel version."""

    model: str
    version: int
    state: ModelVersionState
    labels: tuple[str, ...]
    artifact_uri: str
    input_spec: InputSpec
    preprocessing_version: str
    create_time: datetime | None = None
    # Results the version produced (every clinic), in all and per traffic arm.
    result_count: int = 0
    stable_result_count: int = 0
    canary_result_count: int = 0


@dataclass(frozen=True)
class Model:
    """A model with its versions (oldest first) and routing."""

    name: str
    kind: AnalysisKind
    stable_version: int = 0
    previous_stable_version: int = 0
    traffic_split: tuple[TrafficWeight, ...] = ()
    versions: tuple[ModelVersion, ...] = ()
    create_time: datetime | None = None
    update_time: datetime | None = None

    def version(self, number: int) -> ModelVersion:
        """The registered version `number`; NotFound otherwise."""
        for item in self.versions:
            if item.version == number:
                return item
        raise NotFound(f"models/{self.name}/versions/{number} does not exist")


@dataclass(frozen=True)
class Assignment:
    """The version that serves a study, and which arm of the split picked it."""

    version: int
    arm: TrafficArm


@dataclass(frozen=True)
class RoutingChange:
    """What a registry change does: the model's new routing and the versions' new states."""

    stable_version: int
    previous_stable_version: int
    traffic_split: tuple[TrafficWeight, ...]
    states: dict[int, ModelVersionState] = field(default_factory=dict)


RoutingChangeFn = Callable[[Model], RoutingChange]
"""A registry change as a function of the model's current state."""


def _summary(what: str, violations: Sequence[FieldViolation]) -> str:
    return f"{what}: " + "; ".join(f"{v.field} {v.description}" for v in violations)


def model_id(name: str, field_path: str = "name") -> str:
    """`models/{model}` → `{model}`; InvalidArgument for anything else."""
    prefix, _, model = name.partition("/")
    if prefix != "models" or not _MODEL_ID.fullmatch(model):
        raise InvalidArgument.for_field(field_path, "must look like models/{model}")
    return model


def validate_registration(
    model: str,
    *,
    version: int,
    kind: AnalysisKind,
    artifact_uri: str,
    labels: Sequence[str],
    input_spec: InputSpec | None,
    preprocessing_version: str,
    existing: Model | None,
    buckets: frozenset[str] = frozenset({ML_MODELS}),
) -> str:
    """Check a RegisterModelVersion request; returns the artifact's key prefix in `ml-models`
    (`<model>/<version>/`). `buckets` are the names the bucket may go by (logical, and real
    with a deployment's prefix). Raises InvalidArgument naming every bad field at once."""
    violations: list[FieldViolation] = []
    if version <= 0:
        violations.append(FieldViolation("version", "must be positive"))
    if kind == AnalysisKind.UNSPECIFIED:
        violations.append(FieldViolation("kind", "is required"))
    elif existing is not None and existing.kind != kind:
        violations.append(FieldViolation("kind", f"models/{model} is {existing.kind.name}"))
    match = _ARTIFACT_URI.fullmatch(artifact_uri)
    if not match or match["bucket"] not in buckets:
        violations.append(
            FieldViolation("artifact_uri", f"must look like s3://{ML_MODELS}/<model>/<version>/")
        )
    elif match["model"] != model or int(match["version"]) != version:
        violations.append(FieldViolation("artifact_uri", f"must point at {model}/{version}/"))
    if not labels or any(not label.strip() for label in labels):
        violations.append(FieldViolation("labels", "must be non-empty strings, at least one"))
    if input_spec is None or not input_spec.input_name or not input_spec.output_name:
        violations.append(FieldViolation("input_spec", "needs input_name and output_name"))
    if not preprocessing_version:
        violations.append(FieldViolation("preprocessing_version", "is required"))
    if violations:
        raise InvalidArgument(_summary("invalid model version", violations), violations)
    return f"{model}/{version}/"


def effective_split(model: Model) -> tuple[TrafficWeight, ...]:
    """The weights new studies are assigned by: the explicit split, else all to stable."""
    live = tuple(w for w in model.traffic_split if w.weight > 0)
    if live:
        return live
    if model.stable_version:
        return (TrafficWeight(model.stable_version, 100),)
    return ()


def study_bucket(model: str, study_id: str) -> int:
    """The study's fixed position 0..9999 on the model's split."""
    digest = hashlib.sha256(f"{model}:{study_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def arm_of(model: Model, version: int) -> TrafficArm:
    """STABLE for the stable version, CANARY for any other."""
    return TrafficArm.STABLE if version == model.stable_version else TrafficArm.CANARY


def pick_version(model: Model, study_id: str) -> Assignment:
    """Assign a study by the current split; FailedPrecondition when nothing serves."""
    split = effective_split(model)
    if not split:
        raise FailedPrecondition(f"models/{model.name} has no stable version and no split")
    bucket = study_bucket(model.name, study_id)
    boundary = 0
    for weight in split:
        boundary += weight.weight * BUCKETS // 100
        if bucket < boundary:
            return Assignment(weight.version, arm_of(model, weight.version))
    last = split[-1].version  # rounding leaves no gap when weights sum to 100; be safe anyway
    return Assignment(last, arm_of(model, last))


def keep_or_reassign(model: Model, study_id: str, stored: Assignment | None) -> Assignment:
    """The stored assignment while its version still receives traffic, else a new one."""
    if stored is not None and any(w.version == stored.version for w in effective_split(model)):
        return replace(stored, arm=arm_of(model, stored.version))
    return pick_version(model, study_id)


def validate_split(model: Model, split: Sequence[TrafficWeight]) -> RoutingChange:
    """Check a SetTrafficSplit request and derive the versions' states (canary / registered)."""
    violations: list[FieldViolation] = []
    known = {v.version for v in model.versions}
    seen: set[int] = set()
    for index, weight in enumerate(split):
        path = f"traffic_split[{index}]"
        if not 0 <= weight.weight <= 100:
            violations.append(FieldViolation(f"{path}.weight", "must be between 0 and 100"))
        if weight.version in seen:
            violations.append(FieldViolation(f"{path}.version", "repeats"))
        if weight.version not in known:
            violations.append(FieldViolation(f"{path}.version", "is not registered"))
        seen.add(weight.version)
    if not split:
        violations.append(FieldViolation("traffic_split", "is required"))
    elif sum(w.weight for w in split) != 100:
        violations.append(FieldViolation("traffic_split", "weights must sum to 100"))
    if violations:
        raise InvalidArgument(_summary("invalid traffic split", violations), violations)
    weighted = {w.version for w in split if w.weight > 0}
    states: dict[int, ModelVersionState] = {}
    for item in model.versions:
        if item.version == model.stable_version:
            continue
        if item.version in weighted:
            states[item.version] = ModelVersionState.CANARY
        elif item.state == ModelVersionState.CANARY:
            states[item.version] = ModelVersionState.REGISTERED
    return RoutingChange(model.stable_version, model.previous_stable_version, tuple(split), states)


def promote(model: Model, version: int) -> RoutingChange:
    """Make `version` stable with all traffic; the old stable becomes the rollback target."""
    model.version(version)  # NotFound for an unknown version
    if version == model.stable_version and not effective_split(model)[1:]:
        return RoutingChange(model.stable_version, model.previous_stable_version, ())
    states = {
        v.version: ModelVersionState.REGISTERED
        for v in model.versions
        if v.state == ModelVersionState.CANARY and v.version != version
    }
    states[version] = ModelVersionState.STABLE
    previous = model.previous_stable_version
    if model.stable_version and model.stable_version != version:
        states[model.stable_version] = ModelVersionState.RETIRED
        previous = model.stable_version
    return RoutingChange(version, previous, (), states)


def rollback(model: Model) -> RoutingChange:
    """Back to previous_stable_version with all traffic; the current stable is retired."""
    if not model.previous_stable_version:
        raise FailedPrecondition(f"models/{model.name} has no previous stable version")
    states = {
        v.version: ModelVersionState.REGISTERED
        for v in model.versions
        if v.state == ModelVersionState.CANARY
    }
    states[model.previous_stable_version] = ModelVersionState.STABLE
    if model.stable_version:
        states[model.stable_version] = ModelVersionState.RETIRED
    return RoutingChange(model.previous_stable_version, 0, (), states)
