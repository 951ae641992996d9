"""The report as a FHIR R4 `DiagnosticReport`, built as plain JSON and validated with the
`fhir.resources` models before anything is sent.

`fhir.resources` 8 ships R5 at its top level and R4B (4.3.0) under `fhir.resources.R4B`;
DiagnosticReport, Observation and Attachment did not change between R4 (4.0.1) and R4B in
any element used here, so the R4B models validate what an R4 server expects.

Mapping (README, "Reports", has the table):
- `status` is `preliminary`: an AI result waits for a clinician's review.
- `subject` is a logical reference by identifier (the clinic's patient reference); medmesh
  holds no Patient resources.
- each finding is a contained `Observation` coded with the model's label
  (`urn:medmesh:model:<model>` system: model labels, not SNOMED CT), its score in
  `valueQuantity` and model + version + preprocessing in `method`; `result` points at them.
- `conclusion` states the AI notice and the top finding of each result; `conclusionCode`
  holds the same findings coded.
- `presentedForm` carries the PDF (base64), its size and SHA-1 (FHIR's hash is SHA-1).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from svc_report.model import AnalysisResult, Score, Study
from svc_report.render import AI_NOTICE, language_warnings

REPORT_SYSTEM = "urn:medmesh:report"
STUDY_SYSTEM = "urn:medmesh:study"
PDF_TYPE = "application/pdf"


def patient_system(clinic_id: str) -> str:
    """The identifier system of a clinic's patient references."""
    return f"urn:medmesh:clinic:{clinic_id}:patient"


def label_system(model_name: str) -> str:
    """The code system of a model's labels."""
    return f"urn:medmesh:model:{model_name}"


def _coded(result: AnalysisResult, score: Score) -> dict[str, Any]:
    return {
        "coding": [
            {"system": label_system(result.model_name), "code": score.label, "display": score.label}
        ],
        "text": score.label,
    }


def _provenance(result: AnalysisResult) -> str:
    return (
        f"{result.model_name} version {result.model_version}, "
        f"preprocessing {result.preprocessing_version}"
    )


def _observation(
    obs_id: str, result: AnalysisResult, score: Score, subject: dict[str, Any]
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "status": "preliminary",
        "code": _coded(result, score),
        "subject": subject,
        "valueQuantity": {"value": round(score.score, 6), "unit": "score"},
        "method": {"text": _provenance(result)},
        "note": [{"text": f"{AI_NOTICE} Result {result.result_id}."}],
    }


def conclusion_text(results: Sequence[AnalysisResult]) -> str:
    """The AI notice, then the top finding of each result with its provenance."""
    parts = []
    for result in results:
        if result.scores:
            top = result.scores[0]
            parts.append(
                f"{top.label} ({top.score:.3f}; {result.model_name} v{result.model_version})"
            )
    warnings = " ".join(dict.fromkeys(w for r in results for w in language_warnings(r)))
    tail = f" {warnings}" if warnings else ""
    if not parts:
        return f"{AI_NOTICE} The models reported no findings.{tail}"
    return f"{AI_NOTICE} Top findings: " + "; ".join(parts) + "." + tail


def build_diagnostic_report(
    *,
    report_id: str,
    version: int,
    study: Study,
    results: Sequence[AnalysisResult],
    pdf: bytes,
    issued: datetime,
) -> dict[str, Any]:
    """The DiagnosticReport as JSON, validated (raises pydantic.ValidationError if not)."""
    subject = {
        "identifier": {"system": patient_system(study.clinic_id), "value": study.patient_ref}
    }
    contained: list[dict[str, Any]] = []
    for result in results:
        for score in result.scores:
            contained.append(_observation(f"finding-{len(contained) + 1}", result, score, subject))
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [
            {"system": REPORT_SYSTEM, "value": report_id},
            {"system": STUDY_SYSTEM, "value": f"{study.study_id}/v{version}"},
        ],
        "status": "preliminary",
        "category": [{"text": "AI-assisted analysis"}],
        "code": {
            "coding": [{"system": REPORT_SYSTEM, "code": "ai-analysis"}],
            "text": "AI-assisted diagnostic analysis",
        },
        "subject": subject,
        "effectiveDateTime": study.create_time.isoformat(),
        "issued": issued.isoformat(),
        "performer": [{"display": "medmesh (AI-assisted, not reviewed)"}],
        "contained": contained,
        "result": [{"reference": f"#{o['id']}"} for o in contained],
        "conclusion": conclusion_text(results),
        "conclusionCode": [_coded(r, r.scores[0]) for r in results if r.scores],
        "presentedForm": [
            {
                "contentType": PDF_TYPE,
                "language": "en",
                "data": base64.b64encode(pdf).decode("ascii"),
                "size": len(pdf),
                "hash": base64.b64encode(hashlib.sha1(pdf).digest()).decode("ascii"),  # noqa: S324 - FHIR's Attachment.hash is SHA-1 by definition
                "title": f"medmesh report {study.study_id} v{version}.pdf",
                "creation": issued.isoformat(),
            }
        ],
    }
    if not contained:
        del resource["contained"], resource["result"]
    if not resource["conclusionCode"]:
        del resource["conclusionCode"]
    DiagnosticReport.model_validate(resource)
    return resource
