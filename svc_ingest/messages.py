"""Rows → contract messages (the servicer's half of proto ↔ domain)."""

from __future__ import annotations

from gen.medmesh.common.v1 import FileKind, StudyStatus
from gen.medmesh.ingest.v1 import FileStatus, Study, StudyFile, WatchStudyResponse
from svc_ingest import store
from svc_ingest.studies import StudyView, WatchUpdate


def study_file(row: store.Row) -> StudyFile:
    """A `medical_data` row as a StudyFile."""
    return StudyFile(
        name=f"studies/{row['study_id']}/files/{row['file_id']}",
        file_id=str(row["file_id"]),
        kind=FileKind(row["kind"]),
        file_name=row["file_name"],
        content_type=row["content_type"],
        size_bytes=row["size_bytes"],
        sha256=row["sha256"],
        status=FileStatus(row["status"]),
        image_width=row["image_width"],
        image_height=row["image_height"],
        create_time=row["create_time"],
        failure_reason=row["failure_reason"],
    )


def study(view: StudyView) -> Study:
    """A study row (with its files when the view has them) as a Study."""
    row = view.study
    return Study(
        name=f"studies/{row['study_id']}",
        study_id=str(row["study_id"]),
        clinic_id=row["clinic_id"],
        patient_ref=row["patient_ref"],
        description=row["description"],
        status=StudyStatus(row["status"]),
        failure_reason=row["failure_reason"],
        files=[study_file(f) for f in view.files],
        create_time=row["create_time"],
        update_time=row["update_time"],
        creator=f"users/{row['creator']}",
    )


def watch_response(update: WatchUpdate) -> WatchStudyResponse:
    """One WatchStudy message."""
    return WatchStudyResponse(
        study=f"studies/{update.study_id}",
        status=update.status,
        previous_status=update.previous_status,
        file=study_file(update.file) if update.file is not None else None,
        reason=update.reason,
        event_time=update.event_time,
    )
