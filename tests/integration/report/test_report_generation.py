"""Results in, report out: StudyResultsReady and GenerateReport make a report from the read
models (PostgreSQL views, the Redis result cache, processed images), rendered to HTML and
PDF, archived, announced with ReportReady, and read back (audited) by RPC."""

from __future__ import annotations

import hashlib
import io
import uuid

import grpc
import httpx
import pypdf
import pytest
from report_harness import XSS_PATIENT, ReportHarness

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.events.v1 import DeadLetterEnvelope, ReportJob, ReportReady
from gen.medmesh.report.v1 import (
    GenerateReportRequest,
    GetReportDownloadUrlRequest,
    GetReportRequest,
    ListReportsRequest,
    ReportStatus,
)
from medmesh.objects import REPORTS_ARCHIVE


def pdf_text(pdf: bytes) -> str:
    """All text of a PDF, pages joined."""
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)


async def test_results_ready_event_makes_an_archived_pdf_with_findings_and_versions_and_an_event(
    reports: ReportHarness,
) -> None:
    study = await reports.seed_study()

    await reports.announce(study)
    row = await reports.wait_for_report(study.study_id)

    events = await reports.messages(reports.topology.report_ready_subject, ReportReady)
    assert [(e.study_id, e.report_id, e.version, e.sha256) for e in events] == [
        (study.study_id, str(row["report_id"]), 1, row["sha256"])
    ]
    archived = await reports.objects.get_bytes(REPORTS_ARCHIVE, row["archive_key"])
    assert hashlib.sha256(archived).hexdigest() == row["sha256"] == events[0].sha256
    assert sorted(row["result_ids"]) == sorted(study.result_ids)

    pdf, messages = await reports.download(f"reports/{row['report_id']}")
    assert pdf == archived
    assert (messages[0].content_type, messages[0].size_bytes, messages[0].sha256) == (
        "application/pdf",
        len(pdf),
        row["sha256"],
    )
    text = pdf_text(pdf)
    for expected in (
        "consolidation",
        "0.812",
        "resnet50",
        "img-pre-2",  # image preprocessing version
        "pneumonia",
        "0.734",
        "minilm",
        "txt-pre-7",  # text preprocessing version
        "urgent",
        "PAT-0042",
        "AI-assisted result, to be reviewed by a clinician.",
    ):
        assert expected in text, expected
    assert "resnet50 v3" in text
    assert "minilm v2" in text
    first_page = pypdf.PdfReader(io.BytesIO(pdf)).pages[0]
    assert len(first_page.images) == 1  # the processed image's thumbnail


async def test_the_html_escapes_a_script_tag_given_as_patient_reference(
    reports: ReportHarness,
) -> None:
    study = await reports.seed_study(patient_ref=XSS_PATIENT)
    await reports.announce(study)
    row = await reports.wait_for_report(study.study_id)

    response = await reports.report.get_report(
        GetReportRequest(name=f"reports/{row['report_id']}"), metadata=reports.metadata()
    )

    assert response.report.status == ReportStatus.READY
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.html
    assert "<script" not in response.html
    assert "chest &lt;pa&gt;.png" in response.html  # file names are escaped too
    pdf, _ = await reports.download(response.report.name)
    assert XSS_PATIENT in pdf_text(pdf)  # shown literally, as text


async def test_the_same_result_set_makes_no_second_version_and_new_results_make_version_two(
    reports: ReportHarness,
) -> None:
    study = await reports.seed_study()
    await reports.announce(study)
    first = await reports.wait_for_report(study.study_id)
    await reports.announce(study)  # the same set again (a new event id)
    await reports.wait_until_consumed("report-results-ready", reports.topology.events_stream)

    again = await reports.report.generate_report(
        GenerateReportRequest(study=f"studies/{study.study_id}"), metadata=reports.metadata()
    )
    assert again.report.report_id == str(first["report_id"])
    assert again.report.version == 1

    newer = await reports.add_image_result(
        study.study_id, study.image_file_id, [("normal", 0.9)], model_version=4
    )
    second = await reports.report.generate_report(
        GenerateReportRequest(study=f"studies/{study.study_id}"), metadata=reports.metadata()
    )
    assert second.report.version == 2
    assert sorted(second.report.result_ids) == sorted([newer, study.note_result_id])
    await reports.wait_for_report(study.study_id, version=2)
    listed = await reports.report.list_reports(
        ListReportsRequest(study=f"studies/{study.study_id}"), metadata=reports.metadata()
    )
    assert [(r.version, r.status) for r in listed.reports] == [
        (2, ReportStatus.READY),
        (1, ReportStatus.READY),
    ]
    rows = await reports.execute(
        "SELECT count(*) AS n FROM report.reports WHERE study_id = %s", (study.study_id,)
    )
    assert rows[0]["n"] == 2


async def test_generate_report_refuses_while_a_file_is_still_being_analysed(
    reports: ReportHarness,
) -> None:
    study = await reports.seed_study()
    await reports.add_file(
        study.study_id, str(uuid.uuid4()), FileKind.IMAGE_JPEG, "late.jpg", "image/jpeg", status=4
    )

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await reports.report.generate_report(
            GenerateReportRequest(study=f"studies/{study.study_id}"), metadata=reports.metadata()
        )

    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "still being analysed" in (error.value.details() or "")
    assert await reports.execute("SELECT * FROM report.reports") == []


@pytest.mark.parametrize(
    ("roles", "code"),
    [
        (("technician",), grpc.StatusCode.PERMISSION_DENIED),
        (("viewer",), grpc.StatusCode.PERMISSION_DENIED),
        (("clinician",), grpc.StatusCode.NOT_FOUND),  # allowed, but no such study
        (("admin",), grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_generate_report_needs_a_clinician_or_admin(
    reports: ReportHarness, roles: tuple[str, ...], code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await reports.report.generate_report(
            GenerateReportRequest(study=f"studies/{uuid.uuid4()}"),
            metadata=reports.metadata(roles=roles),
        )
    assert error.value.code() == code


async def test_views_and_downloads_are_audited_and_the_presigned_url_serves_the_pdf(
    reports: ReportHarness,
) -> None:
    study = await reports.seed_study()
    await reports.announce(study)
    row = await reports.wait_for_report(study.study_id)
    name = f"reports/{row['report_id']}"

    await reports.report.get_report(GetReportRequest(name=name), metadata=reports.metadata())
    pdf, _ = await reports.download(name)
    link = await reports.report.get_report_download_url(
        GetReportDownloadUrlRequest(name=name), metadata=reports.metadata()
    )
    async with httpx.AsyncClient() as client:
        fetched = await client.get(link.url)

    assert fetched.status_code == 200
    assert fetched.content == pdf
    audit = await reports.execute(
        "SELECT action, actor_user_id, study_id FROM audit.events WHERE resource = %s ORDER BY id",
        (name,),
    )
    assert [a["action"] for a in audit] == [
        "report.ready",
        "report.view",
        "report.download",
        "report.download_url",
    ]
    assert {a["study_id"] for a in audit} == {study.study_id}
    assert audit[1]["actor_user_id"] == "user-clinic-a-clinician"


async def test_a_report_whose_results_never_appear_fails_after_its_attempts_and_is_dead_lettered(
    reports: ReportHarness,
) -> None:
    await reports.shorten_server_backoff(reports.topology.report_consumer)
    study = await reports.seed_study()
    study.result_ids.append(str(uuid.uuid4()))  # a result nobody can see

    await reports.announce(study)
    row = await reports.wait_for_report(study.study_id, status=ReportStatus.FAILED)

    assert "not visible" in row["failure_reason"]
    letters = await reports.messages(
        reports.topology.dlq_subject(reports.topology.report_subject), DeadLetterEnvelope
    )
    assert len(letters) == 1
    assert letters[0].attempts == 4  # MEDMESH_JOB_MAX_ATTEMPTS: once, then three retries
    assert ReportJob.FromString(letters[0].payload).report_id == str(row["report_id"])
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await reports.download(f"reports/{row['report_id']}")
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_pdf_missing_from_the_archive_or_altered_there_is_data_loss(
    reports: ReportHarness,
) -> None:
    study = await reports.seed_study()
    await reports.announce(study)
    row = await reports.wait_for_report(study.study_id)
    name = f"reports/{row['report_id']}"

    await reports.objects.put_bytes(REPORTS_ARCHIVE, row["archive_key"], b"%PDF-1.4 altered")
    with pytest.raises(grpc.aio.AioRpcError) as altered:
        await reports.download(name)
    await reports.objects.remove(REPORTS_ARCHIVE, row["archive_key"])
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await reports.download(name)

    assert altered.value.code() == grpc.StatusCode.DATA_LOSS
    assert "does not match" in (altered.value.details() or "")
    assert missing.value.code() == grpc.StatusCode.DATA_LOSS
    assert "missing" in (missing.value.details() or "")
