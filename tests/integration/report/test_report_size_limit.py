"""A report above MEDMESH_REPORT_MAX_REPORT_BYTES (issue 11, item 15) fails cleanly: FAILED
with the sizes as its reason, one dead letter, nothing archived, no retry loop; other reports
are not held up."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from report_harness import ReportHarness

from gen.medmesh.events.v1 import DeadLetterEnvelope, ReportJob
from gen.medmesh.report.v1 import ReportStatus
from medmesh.objects import REPORTS_ARCHIVE

LIMIT = 200_000  # an ordinary test report (two files, thumbnails) is ~100 kB of HTML


@pytest.fixture
def report_extra(report_extra: Mapping[str, str]) -> dict[str, str]:
    """The shared test settings with a report size limit of LIMIT bytes."""
    return {**report_extra, "MEDMESH_REPORT_MAX_REPORT_BYTES": str(LIMIT)}


async def test_a_report_over_the_size_limit_fails_once_and_is_dead_lettered_not_archived(
    reports: ReportHarness,
) -> None:
    # 1500 findings make a report HTML of ~350 kB.
    labels = [(f"finding-{n:04d}-" + "x" * 40, 0.5) for n in range(1500)]
    big = await reports.seed_study(image_labels=labels)
    await reports.announce(big)
    row = await reports.wait_for_report(big.study_id, status=ReportStatus.FAILED)

    assert f"over the limit of {LIMIT}" in row["failure_reason"]
    assert "MEDMESH_REPORT_MAX_REPORT_BYTES" in row["failure_reason"]
    letters = await reports.messages(
        reports.topology.dlq_subject(reports.topology.report_subject), DeadLetterEnvelope
    )
    assert len(letters) == 1
    assert letters[0].attempts == 1  # the same inputs give the same size: no retry
    assert ReportJob.FromString(letters[0].payload).report_id == str(row["report_id"])
    archive = reports.objects.bucket(REPORTS_ARCHIVE)
    assert list(reports.objects.client.list_objects(archive, recursive=True)) == []

    # An ordinary report after it is built as usual.
    small = await reports.seed_study(patient_ref="PAT-0043")
    await reports.announce(small)
    ready = await reports.wait_for_report(small.study_id)
    assert ready["status"] == ReportStatus.READY
    assert ready["size_bytes"] <= LIMIT
