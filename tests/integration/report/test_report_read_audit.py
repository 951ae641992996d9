"""Report reads are audited once each (GetReport `report.view`, DownloadReport
`report.download`, GetReportDownloadUrl `report.download_url`), and a refused one (another
clinic's report or study: NOT_FOUND; a role the table refuses: PERMISSION_DENIED) leaves an
`access.denied` row under the *caller's* clinic that names only what the caller sent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from report_harness import CLINIC, OTHER_CLINIC, ReportHarness

from gen.medmesh.report.v1 import (
    DownloadReportRequest,
    GetDeliveryTargetRequest,
    GetReportDownloadUrlRequest,
    GetReportRequest,
    ListReportsRequest,
)

Call = Callable[[ReportHarness, str, str, Any], Awaitable[Any]]


async def _get(h: ReportHarness, report: str, _study: str, md: Any) -> Any:
    return await h.report.get_report(GetReportRequest(name=report), metadata=md)


async def _download(h: ReportHarness, report: str, _study: str, md: Any) -> Any:
    return [
        m async for m in h.report.download_report(DownloadReportRequest(name=report), metadata=md)
    ]


async def _url(h: ReportHarness, report: str, _study: str, md: Any) -> Any:
    return await h.report.get_report_download_url(
        GetReportDownloadUrlRequest(name=report), metadata=md
    )


async def _list(h: ReportHarness, _report: str, study: str, md: Any) -> Any:
    return await h.report.list_reports(ListReportsRequest(study=study), metadata=md)


READS: dict[str, tuple[Call, str, str]] = {
    # rpc: (call, audit action when allowed, resource kind named by the request)
    "GetReport": (_get, "report.view", "report"),
    "DownloadReport": (_download, "report.download", "report"),
    "GetReportDownloadUrl": (_url, "report.download_url", "report"),
    "ListReports": (_list, "", "study"),
}


async def _ready_report(reports: ReportHarness) -> tuple[str, str]:
    study = await reports.seed_study()
    await reports.announce(study)
    row = await reports.wait_for_report(study.study_id)
    return f"reports/{row['report_id']}", f"studies/{study.study_id}"


async def _rows(reports: ReportHarness, clinic: str) -> list[tuple[Any, ...]]:
    rows = await reports.execute(
        "SELECT actor_user_id, actor_roles, action, resource, study_id, detail"
        " FROM audit.events WHERE clinic_id = %s AND actor_user_id LIKE 'user-%%' ORDER BY id",
        (clinic,),
    )
    return [tuple(r.values()) for r in rows]


@pytest.mark.parametrize("rpc", ["GetReport", "DownloadReport", "GetReportDownloadUrl"])
async def test_each_report_read_leaves_exactly_one_row_of_its_action_and_actor(
    reports: ReportHarness, rpc: str
) -> None:
    report, study = await _ready_report(reports)
    call, action, _ = READS[rpc]

    await call(reports, report, study, reports.metadata(roles=("viewer",)))

    rows = await _rows(reports, CLINIC)
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        (f"user-{CLINIC}-viewer", ["viewer"], action, report, study.removeprefix("studies/"))
    ]


@pytest.mark.parametrize("rpc", sorted(READS))
async def test_another_clinics_report_read_is_not_found_and_audited_as_denied_for_the_caller(
    reports: ReportHarness, rpc: str
) -> None:
    report, study = await _ready_report(reports)
    call, _, kind = READS[rpc]
    owners_rows = await _rows(reports, CLINIC)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(
            reports, report, study, reports.metadata(clinic_id=OTHER_CLINIC, roles=("admin",))
        )

    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    for leaked in (CLINIC, "PAT-0042", "consolidation"):
        assert leaked not in (error.value.details() or "")
    assert await _rows(reports, OTHER_CLINIC) == [
        (
            f"user-{OTHER_CLINIC}-admin",
            ["admin"],
            "access.denied",
            report if kind == "report" else study,
            None,
            {"rpc": rpc, "code": "NOT_FOUND"},
        )
    ]
    assert await _rows(reports, CLINIC) == owners_rows


@pytest.mark.parametrize("roles", [("viewer",), ("technician",), ("clinician",), ()])
async def test_a_role_the_table_refuses_is_permission_denied_and_audited(
    reports: ReportHarness, roles: tuple[str, ...]
) -> None:
    metadata = reports.tokens.metadata_for(
        user_id="user-refused", clinic_id=CLINIC, roles=list(roles)
    )
    name = f"clinics/{CLINIC}/deliveryTarget"

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await reports.report.get_delivery_target(
            GetDeliveryTargetRequest(name=name), metadata=metadata
        )

    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    rows = await reports.execute(
        "SELECT clinic_id, actor_roles, action, resource, detail FROM audit.events"
        " WHERE actor_user_id = 'user-refused'"
    )
    assert [tuple(r.values()) for r in rows] == [
        (
            CLINIC,
            sorted(roles),
            "access.denied",
            name,
            {"rpc": "GetDeliveryTarget", "code": "PERMISSION_DENIED"},
        )
    ]
