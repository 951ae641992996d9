"""What a result is, independent of storage and wire format: the record a worker drafts, the
row it becomes, and the analysis as JSON (the `analysis` column and the cache agree on it).

Also the rule for "all files of a study have results": ingest's jobs say how many analysable
files the study holds (`study_file_count`); the workers remember every file they saw a job
for. A study is complete when every seen file has a result and there are at least as many
such files as the largest count any job announced. It is announced again (with the longer
list) when a file added later completes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gen.medmesh.common.v1 import AnalysisKind
from gen.medmesh.infer.v1 import TrafficArm
from svc_infer.postprocess import ScoredLabel, TextFindings


@dataclass(frozen=True)
class Timings:
    """Durations of a job's stages, in milliseconds."""

    queue_ms: float = 0.0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True)
class ResultDraft:
    """A result as a worker produces it, before it has an id."""

    job_id: str
    clinic_id: str
    study_id: str
    file_id: str
    kind: AnalysisKind
    model_name: str
    model_version: int
    preprocessing_version: str
    arm: TrafficArm
    analysis: Mapping[str, Any]
    processed_key: str = ""
    timings: Timings = field(default_factory=Timings)


@dataclass(frozen=True)
class StoredResult:
    """A stored result: the draft, its id and when it was stored."""

    result_id: str
    draft: ResultDraft
    create_time: datetime


@dataclass(frozen=True)
class StudyProgress:
    """What the workers know about one study, read under the study's row lock."""

    expected_files: int
    announced_results: int
    seen_files: int
    result_ids: tuple[str, ...]
    """The newest result of each seen file that has one, oldest file first."""

    def newly_complete(self) -> bool:
        """True when every known file has a result and that was not announced yet."""
        done = len(self.result_ids)
        return (
            done > 0
            and done == self.seen_files
            and done >= self.expected_files
            and done > self.announced_results
        )


def _scored(items: Sequence[ScoredLabel]) -> list[dict[str, Any]]:
    return [{"label": s.label, "score": round(float(s.score), 6)} for s in items]


def image_analysis(top_k: Sequence[ScoredLabel]) -> dict[str, Any]:
    """The `analysis` JSON of an image result."""
    return {"top_k": _scored(top_k)}


def text_analysis(findings: TextFindings) -> dict[str, Any]:
    """The `analysis` JSON of a text result."""
    return {
        "findings": _scored(findings.findings),
        "urgency": _scored([findings.urgency])[0],
        "summary": findings.summary,
        "language": findings.language,
        "model_languages": list(findings.model_languages),
        "outside_model_languages": findings.outside_model_languages,
    }
