"""Reports and mails in any language: Russian, accented Latin and common symbols come out of
the PDF as the text that went in (the PDF embeds DejaVu Sans; the base-14 fonts drew black
boxes), the HTML declares UTF-8, a note outside the text model's languages carries a visible
warning in English and Russian (report, PDF, FHIR conclusion), and the "report ready" mail
encodes a Russian sender name and subject per RFC 2047."""

from __future__ import annotations

import email
import email.policy
import io
import logging
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from html import unescape
from pathlib import Path

import pypdf
import pytest
from report_harness import Mailbox, ReportHarness

from gen.medmesh.common.v1 import AnalysisKind, FileKind, LabelScore
from gen.medmesh.infer.v1 import TextAnalysis
from gen.medmesh.report.v1 import GetReportRequest
from svc_report.fhir import conclusion_text
from svc_report.model import AnalysisResult, Score, Study, StudyFile
from svc_report.render import ReportFacts, render_html, render_pdf

NOTE = "Кашель, температура 39 °C, хрипы справа — подозрение на пневмонию"
DESCRIPTION = "Crème brûlée, naïve Ærø; ± 5 µg — № 7, 39 °C"
PATIENT = "Пациент №42 (Ёлкина-Щукина)"
FILE_NAME = "заметка-врача.txt"
WARNING_EN = (
    "Note language (ru) is outside the model's languages (en): findings are unreliable."
)
WARNING_RU = "Язык заметки (ru) не входит в языки модели (en): результаты ненадёжны."


def pdf_lines(pdf: bytes) -> list[str]:
    """Every text line of a PDF, pages in order."""
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    return [line for page in reader.pages for line in page.extract_text().splitlines()]


def russian_note_facts(*, outside: bool) -> ReportFacts:
    """A report of one Russian note (its summary is the note itself)."""
    now = datetime.now(UTC)
    study = Study("study-ru", "clinic-a", PATIENT, DESCRIPTION, now)
    note = StudyFile("file-ru", FileKind.TEXT_NOTE, FILE_NAME, "text/plain", 5, now)
    result = AnalysisResult(
        result_id="result-ru",
        clinic_id="clinic-a",
        study_id="study-ru",
        file_id="file-ru",
        kind=AnalysisKind.TEXT_ANALYSIS,
        model_name="minilm",
        model_version=1,
        preprocessing_version="text-wordpiece-v1",
        create_time=now,
        findings=(Score("pneumonia", 0.41),),
        urgency=Score("urgent", 0.52),
        summary=NOTE,
        language="ru",
        model_languages=("en",),
        outside_model_languages=outside,
    )
    return ReportFacts("report-ru", 1, study, [note], [result], now, {})


def test_russian_accents_and_symbols_come_out_of_the_pdf_as_the_text_that_went_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="xhtml2pdf"):
        pdf = render_pdf(render_html(russian_note_facts(outside=False)))

    lines = pdf_lines(pdf)
    assert f"Summary of the note: {NOTE}" in lines
    assert DESCRIPTION in lines
    assert PATIENT in lines
    assert any(FILE_NAME in line for line in lines)
    assert "■" not in "".join(lines)
    missing_glyphs = [r.getMessage() for r in caplog.records if "can draw" in r.getMessage()]
    assert missing_glyphs == []
    fonts = {
        str(font["/BaseFont"])
        for page in pypdf.PdfReader(io.BytesIO(pdf)).pages
        for font in page["/Resources"]["/Font"].values()
    }
    assert any("DejaVuSans" in name for name in fonts), fonts


def test_a_note_outside_the_models_languages_is_flagged_in_english_and_russian() -> None:
    facts = russian_note_facts(outside=True)

    page = render_html(facts)
    lines = pdf_lines(render_pdf(page))
    html = unescape(page)

    assert html.count(WARNING_EN) == 2  # at the top and next to the note's findings
    assert html.count(WARNING_RU) == 2
    assert lines.count(WARNING_EN) == 2
    assert lines.count(WARNING_RU) == 2
    assert WARNING_EN in conclusion_text(facts.results)
    assert WARNING_EN not in render_html(russian_note_facts(outside=False))


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="needs poppler's pdftoppm")
def test_the_first_page_renders_to_an_image(tmp_path: Path) -> None:
    pdf_file = tmp_path / "report.pdf"
    pdf_file.write_bytes(render_pdf(render_html(russian_note_facts(outside=True))))

    subprocess.run(
        ["pdftoppm", "-r", "60", "-png", "-f", "1", "-l", "1", pdf_file, tmp_path / "page"],
        check=True,
    )

    assert (tmp_path / "page-1.png").stat().st_size > 10_000


async def test_the_service_renders_a_russian_note_and_its_warning_into_html_and_pdf(
    reports: ReportHarness,
) -> None:
    note = TextAnalysis(
        findings=[LabelScore(label="pneumonia", score=0.41)],
        urgency=LabelScore(label="urgent", score=0.52),
        summary=NOTE,
        language="ru",
        model_languages=["en"],
        outside_model_languages=True,
    )
    # From PostgreSQL (not cached) here; from the Redis cache in the second study.
    studies = [
        await reports.seed_study(patient_ref=PATIENT, description=DESCRIPTION, note=note),
        await reports.seed_study(
            patient_ref=PATIENT, description=DESCRIPTION, note=note, cache_note=False
        ),
    ]
    for study in studies:
        await reports.announce(study)
        row = await reports.wait_for_report(study.study_id)
        got = await reports.report.get_report(
            GetReportRequest(name=f"reports/{row['report_id']}"), metadata=reports.metadata()
        )
        pdf, _ = await reports.download(f"reports/{row['report_id']}")

        assert '<meta charset="utf-8">' in got.html
        for expected in (NOTE, DESCRIPTION, PATIENT, WARNING_EN, WARNING_RU):
            assert expected in unescape(got.html)
        lines = pdf_lines(pdf)
        assert f"Summary of the note: {NOTE}" in lines
        assert WARNING_EN in lines
        assert WARNING_RU in lines
        assert DESCRIPTION in lines


@pytest.fixture
def report_extra(report_extra: dict[str, str]) -> dict[str, str]:
    """The service mails as a Russian clinic would configure it."""
    return {
        **report_extra,
        "MEDMESH_REPORT_MAIL_FROM": "Клиника «Здоровье» <reports@clinic.example>",
        "MEDMESH_REPORT_MAIL_SUBJECT": "medmesh: отчёт готов — диагностический отчёт",
    }


async def test_the_report_ready_mail_encodes_a_russian_sender_and_subject_per_rfc_2047(
    reports: ReportHarness, mailbox: Mailbox
) -> None:
    clinician = f"doctor-{uuid.uuid4().hex[:8]}@clinic.example"
    await reports.seed_user(clinician)
    study = await reports.seed_study()

    await reports.announce(study)
    await reports.wait_for_report(study.study_id)
    await mailbox.wait_for(clinician)

    raw = next(r for r in mailbox.raw if clinician.encode() in r)
    headers = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    assert headers.isascii()  # 8-bit headers are not allowed: RFC 2047 words instead
    assert b"=?utf-8?" in headers.lower()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "medmesh: отчёт готов — диагностический отчёт"
    assert parsed["From"].addresses[0].display_name == "Клиника «Здоровье»"
    assert parsed["From"].addresses[0].addr_spec == "reports@clinic.example"
    for part in parsed.walk():
        if part.get_content_maintype() == "text":
            assert part.get_content_charset() in {"utf-8", "us-ascii"}
