"""Domain records ↔ the contract's messages (`medmesh.infer.v1`). Used by the servicers, the
result cache (which stores Result messages) and the event builders."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gen.medmesh.common.v1 import AnalysisKind, LabelScore
from gen.medmesh.infer.v1 import (
    DeadLetter,
    ImageClassification,
    Result,
    TextAnalysis,
)
from gen.medmesh.infer.v1 import (
    InputSpec as InputSpecProto,
)
from gen.medmesh.infer.v1 import (
    Model as ModelProto,
)
from gen.medmesh.infer.v1 import (
    ModelVersion as ModelVersionProto,
)
from gen.medmesh.infer.v1 import (
    Timings as TimingsProto,
)
from gen.medmesh.infer.v1 import (
    TrafficWeight as TrafficWeightProto,
)
from svc_infer.dead_letter_store import DeadLetterRow
from svc_infer.registry import InputSpec, Model, ModelVersion, TrafficWeight
from svc_infer.results import StoredResult


def result_name(study_id: str, result_id: str) -> str:
    """`studies/{study}/results/{result}`."""
    return f"studies/{study_id}/results/{result_id}"


def _label(item: Mapping[str, Any]) -> LabelScore:
    return LabelScore(label=str(item["label"]), score=float(item["score"]))


def result_to_proto(stored: StoredResult) -> Result:
    """A stored result as the API returns it."""
    draft = stored.draft
    message = Result(
        name=result_name(draft.study_id, stored.result_id),
        result_id=stored.result_id,
        study=f"studies/{draft.study_id}",
        file=f"studies/{draft.study_id}/files/{draft.file_id}",
        kind=draft.kind,
        model_name=f"models/{draft.model_name}",
        model_version=draft.model_version,
        preprocessing_version=draft.preprocessing_version,
        arm=draft.arm,
        timings=TimingsProto(
            queue_ms=draft.timings.queue_ms,
            preprocess_ms=draft.timings.preprocess_ms,
            inference_ms=draft.timings.inference_ms,
            total_ms=draft.timings.total_ms,
        ),
        create_time=stored.create_time,
        clinic_id=draft.clinic_id,
    )
    analysis = draft.analysis
    if draft.kind == AnalysisKind.IMAGE_CLASSIFICATION:
        message.image = ImageClassification(top_k=[_label(x) for x in analysis["top_k"]])
    elif draft.kind == AnalysisKind.TEXT_ANALYSIS:
        message.text = TextAnalysis(
            findings=[_label(x) for x in analysis["findings"]],
            urgency=_label(analysis["urgency"]),
            summary=str(analysis.get("summary", "")),
            language=str(analysis.get("language", "")),
            model_languages=[str(code) for code in analysis.get("model_languages", ())],
            outside_model_languages=bool(analysis.get("outside_model_languages", False)),
        )
    return message


def input_spec_to_proto(spec: InputSpec) -> InputSpecProto:
    """The registry's InputSpec record as a message."""
    return InputSpecProto(
        signature_name=spec.signature_name,
        input_name=spec.input_name,
        output_name=spec.output_name,
        shape=list(spec.shape),
        dtype=spec.dtype,
        mean=list(spec.mean),
        std=list(spec.std),
        color_order=spec.color_order,
        max_sequence_length=spec.max_sequence_length,
    )


def input_spec_from_proto(spec: InputSpecProto | None) -> InputSpec | None:
    """A request's InputSpec as a record (None when the request has none)."""
    if spec is None:
        return None
    return InputSpec(
        signature_name=spec.signature_name or "serving_default",
        input_name=spec.input_name,
        output_name=spec.output_name,
        shape=tuple(spec.shape),
        dtype=spec.dtype or "float32",
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        color_order=spec.color_order,
        max_sequence_length=spec.max_sequence_length,
    )


def version_to_proto(version: ModelVersion) -> ModelVersionProto:
    """A registered version as a message."""
    return ModelVersionProto(
        name=f"models/{version.model}/versions/{version.version}",
        version=version.version,
        state=version.state,
        labels=list(version.labels),
        artifact_uri=version.artifact_uri,
        input_spec=input_spec_to_proto(version.input_spec),
        preprocessing_version=version.preprocessing_version,
        create_time=version.create_time,
        result_count=version.result_count,
        stable_result_count=version.stable_result_count,
        canary_result_count=version.canary_result_count,
    )


def model_to_proto(model: Model) -> ModelProto:
    """A model with its versions and split as a message."""
    return ModelProto(
        name=f"models/{model.name}",
        kind=model.kind,
        versions=[version_to_proto(v) for v in model.versions],
        traffic_split=[
            TrafficWeightProto(version=w.version, weight=w.weight) for w in model.traffic_split
        ],
        stable_version=model.stable_version,
        previous_stable_version=model.previous_stable_version,
        create_time=model.create_time,
        update_time=model.update_time,
    )


def split_from_proto(split: list[TrafficWeightProto]) -> list[TrafficWeight]:
    """A request's traffic split as records."""
    return [TrafficWeight(int(w.version), int(w.weight)) for w in split]


def dead_letter_to_proto(row: DeadLetterRow) -> DeadLetter:
    """An indexed dead letter as a message."""
    return DeadLetter(
        name=f"deadLetters/{row.dead_letter_id}",
        dead_letter_id=row.dead_letter_id,
        subject=row.subject,
        payload=row.payload,
        error=row.error,
        attempts=row.attempts,
        first_failure_time=row.first_failure_time,
        last_failure_time=row.last_failure_time,
        clinic_id=row.clinic_id,
        replay_time=row.replay_time,
    )
