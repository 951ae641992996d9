"""Clinics are isolated: another clinic's report or study is NOT_FOUND (never
PERMISSION_DENIED), whether asked by name, listed, downloaded, or reported on; nothing is
audited as seen (refused reads are audited as `access.denied`, see
test_report_read_audit.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from report_harness import OTHER_CLINIC, ReportHarness

from gen.medmesh.report.v1 import (
    DeliverReportRequest,
    DownloadReportRequest,
    GenerateReportRequest,
    GetReportDownloadUrlRequest,
    GetReportRequest,
    ListReportsRequest,
    RedeliverReportRequest,
)

Call = Callable[[ReportHarness, str, str, Any], Awaitable[Any]]


async def _get(h: ReportHarness, report: str, _study: str, md: Any) -> Any:
    return await h.report.get_report(GetReportRequest(name=report), metadata=md)


async def _download(h: ReportHarness, report: str, _study: str, md: Any) -> Any:
    stream = h.report.download_report(DownloadReportRequest(name=report), metadata=md)
    return [m async for m in stream]


async def _url(h: ReportHarness, report: str, _study: str, md: Any) -> Any:
    return await h.report.get_report_download_url(
        GetReportDownloadUrlRequest(name=report), metadata=md
    )


async def _list(h: ReportHarness, _report: str, study: str, md: Any) -> Any:
    return await h.report.list_reports(ListReportsRequest(study=study), metadata=md)


async def _generate(h: ReportHarness, _report: str, study: str, md: Any) -> Any:
    return await h.report.generate_report(GenerateReportRequest(study=study), metadata=md)


async def _deliver(h: ReportHarness, report: str, _study: str, md: Any) -> Any:
    return await h.report.deliver_report(DeliverReportRequest(name=report), metadata=md)


async def _redeliver(h: ReportHarness, report: str, _study: str, md: Any) -> Any:
    return await h.report.redeliver_report(RedeliverReportRequest(name=report), metadata=md)


@pytest.mark.parametrize(
    "call",
    [_get, _download, _url, _list, _generate, _deliver, _redeliver],
    ids=["get", "download", "download-url", "list-by-study", "generate", "deliver", "redeliver"],
)
async def test_another_clinics_report_and_study_are_not_found(
    reports: ReportHarness, call: Call
) -> None:
    study = await reports.seed_study()
    await reports.announce(study)
    row = await reports.wait_for_report(study.study_id)
    stranger = reports.metadata(clinic_id=OTHER_CLINIC, roles=("admin",))

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(reports, f"reports/{row['report_id']}", f"studies/{study.study_id}", stranger)

    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    seen = await reports.execute(
        "SELECT action FROM audit.events WHERE clinic_id = %s AND action <> 'access.denied'",
        (OTHER_CLINIC,),
    )
    assert seen == []


async def test_listing_without_a_study_shows_only_the_callers_clinic(
    reports: ReportHarness,
) -> None:
    ours = await reports.seed_study()
    theirs = await reports.seed_study(clinic_id=OTHER_CLINIC)
    await reports.announce(ours)
    await reports.announce(theirs)
    await reports.wait_for_report(ours.study_id)
    await reports.wait_for_report(theirs.study_id)

    mine = await reports.report.list_reports(ListReportsRequest(), metadata=reports.metadata())
    other = await reports.report.list_reports(
        ListReportsRequest(), metadata=reports.metadata(clinic_id=OTHER_CLINIC)
    )

    assert [r.study for r in mine.reports] == [f"studies/{ours.study_id}"]
    assert [r.study for r in other.reports] == [f"studies/{theirs.study_id}"]
    assert {r.clinic_id for r in mine.reports} == {"clinic-a"}
