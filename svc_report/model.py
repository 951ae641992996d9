"""What svc_report works with, independent of storage and wire format: the facts a report
prints (study, files, results: read from the owners' read models), and the report, target and
receipt records of its own schema."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from gen.medmesh.common.v1 import AnalysisKind, FileKind
from gen.medmesh.report.v1 import DeliveryStatus, ReportStatus


@dataclass(frozen=True)
class Study:
    """A study as `ingest.report_studies` shows it."""

    study_id: str
    clinic_id: str
    patient_ref: str
    description: str
    create_time: datetime


@dataclass(frozen=True)
class StudyFile:
    """A file of a study as `ingest.report_files` shows it (`status`: FileStatus number)."""

    file_id: str
    kind: FileKind
    file_name: str
    content_type: str
    status: int
    create_time: datetime


@dataclass(frozen=True)
class Score:
    """A label and the model's score for it (0..1)."""

    label: str
    score: float


@dataclass(frozen=True)
class AnalysisResult:
    """One result of one file, with its provenance (model, version, preprocessing)."""

    result_id: str
    clinic_id: str
    study_id: str
    file_id: str
    kind: AnalysisKind
    model_name: str
    """Registry name without the `models/` prefix."""
    model_version: int
    preprocessing_version: str
    create_time: datetime
    top_k: tuple[Score, ...] = ()
    findings: tuple[Score, ...] = ()
    urgency: Score | None = None
    summary: str = ""
    language: str = ""
    """The note's detected language (ISO 639-1, `und`); empty for images and older results."""
    model_languages: tuple[str, ...] = ()
    """The languages the model's card declares."""
    outside_model_languages: bool = False
    """The note is in a language the model does not understand: findings are unreliable."""
    processed_key: str = ""
    source: str = "postgres"
    """Where it was read from (`redis` or `postgres`), for logs and tests."""

    @property
    def scores(self) -> tuple[Score, ...]:
        """The labelled scores the report tabulates: image top-k or text findings."""
        return self.top_k if self.kind == AnalysisKind.IMAGE_CLASSIFICATION else self.findings


@dataclass(frozen=True)
class Recipient:
    """A clinician or admin told by e-mail (from `auth.report_recipients` or the target)."""

    email: str
    display_name: str = ""


def result_set_digest(result_ids: Iterable[str]) -> str:
    """The identity of a result set: SHA-256 of the sorted, de-duplicated ids. The same set
    never makes a second report version, whatever order the ids came in."""
    joined = "\n".join(sorted(set(result_ids)))
    return hashlib.sha256(joined.encode()).hexdigest()


@dataclass(frozen=True)
class Receipt:
    """One attempt to push a report to the MIS."""

    attempt_time: datetime
    http_status: int
    mis_id: str
    error: str
    idempotency_key: str


@dataclass(frozen=True)
class ReportRecord:
    """A row of `report.reports` (the HTML is loaded only where it is shown)."""

    report_id: str
    clinic_id: str
    study_id: str
    version: int
    status: ReportStatus
    failure_reason: str
    result_ids: tuple[str, ...]
    requested_by: str
    archive_key: str
    sha256: str
    size_bytes: int
    delivery_status: DeliveryStatus
    create_time: datetime
    ready_time: datetime | None
    notified_at: datetime | None = None
    html: str = ""
    receipts: tuple[Receipt, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class DeliveryTargetRecord:
    """A clinic's MIS endpoint and mail list (`report.delivery_targets`)."""

    clinic_id: str
    fhir_base_url: str
    bearer_token_sealed: bytes | None
    """The MIS bearer token, encrypted (medmesh.keyring.SecretBox); None when there is none."""
    enabled: bool
    notify_emails: tuple[str, ...]
    update_time: datetime

    @property
    def has_bearer_token(self) -> bool:
        """Whether a token is stored."""
        return self.bearer_token_sealed is not None


@dataclass(frozen=True)
class Delivery:
    """A row of `report.deliveries`."""

    delivery_id: str
    report_id: str
    clinic_id: str
    idempotency_key: str
    redelivery: bool
    status: DeliveryStatus
